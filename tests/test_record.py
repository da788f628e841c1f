"""Recording routing: the trace written during a run holds exactly the ids the router chose."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from click.testing import CliRunner
from mlx_lm.models.cache import make_prompt_cache

from mlxstore import moe
from mlxstore.cli.main import main
from mlxstore.formats import StoreReader
from mlxstore.formats.route_trace import GENERATION, PROMPT, load_route_trace
from mlxstore.moe.record import RecordedExperts, record, recorder_of, stop
from mlxstore.pack import pack
from mlxstore.switches import find_switches
from mlxstore.synth import make_model_dir

EXPERTS, TOP_K = 16, 4  # the tiny qwen3_moe of mlxstore.synth


class Spy(nn.Module):
    """Keeps the ids a resident switch module is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "seen", [])

    def __call__(self, x, indices):
        self.seen.append(np.array(indices).reshape(-1, indices.shape[-1]))
        return self.inner(x, indices)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("record")
    src = make_model_dir("qwen3_moe", root / "src", seed=3)
    return src, pack(src, root / "m.store", progress=False)


def _run(model, prompt_len: int, decode: int) -> None:
    cache = make_prompt_cache(model)
    y = model(mx.array(np.arange(5, 5 + prompt_len)[None], dtype=mx.int32), cache=cache)
    for _ in range(decode):
        y = model(mx.argmax(y[:, -1:], axis=-1).astype(mx.int32), cache=cache)
    mx.eval(y)


def _router_ids(src, prompt_len: int, decode: int) -> list[np.ndarray]:
    """Per MoE layer, [tokens, k] ids resident mlx-lm's routers chose for the same run."""
    model, _ = mlx_lm.load(str(src))
    spies = []
    for site in find_switches(model):
        spies.append(Spy(site.module))
        setattr(site.parent, site.attr, spies[-1])
    _run(model, prompt_len, decode)
    return [np.concatenate(s.seen) for s in spies]


@pytest.mark.parametrize("slots", [TOP_K, EXPERTS], ids=["streamed", "every-expert-fits"])
def test_recorded_trace_is_what_the_router_chose(tiny, tmp_path, slots):
    src, store = tiny
    want = _router_ids(src, prompt_len=24, decode=4)
    model, _ = moe.load(store, slots_per_layer=slots)
    banks = [m.bank for _, m in model.named_modules() if hasattr(m, "bank")]
    if slots == EXPERTS:  # every expert read: decode takes the device path with no host sync
        for b in banks:
            b.ensure(list(range(EXPERTS)))
        assert all(b.fixed_slots is not None for b in banks)
    path = tmp_path / "run.route.csv"
    rec = record(model, path, name="tiny")
    _run(model, prompt_len=24, decode=4)
    assert stop(model) is rec and recorder_of(model) is None
    assert not any(isinstance(m, RecordedExperts) for _, m in model.named_modules())
    trace = load_route_trace(path)
    assert (trace.n_layer, trace.n_expert, trace.top_k, trace.model) == (len(want), EXPERTS, TOP_K, "tiny")
    assert [s.step for s in trace.steps] == list(range(28))
    assert [s.phase for s in trace.steps] == [PROMPT] * 24 + [GENERATION] * 4
    for layer, ids in enumerate(want):
        assert np.array_equal(np.array(trace.layer_calls(layer)), ids)
    with StoreReader(store) as r:
        per_expert = [sum(r.index.tensors[n].nbytes for n in g.tensors) // g.num_experts
                      for _, g in sorted(r.index.expert_groups.items(), key=lambda kv: kv[0].split(".")[2].zfill(4))]  # fmt: skip
    assert list(trace.expert_bytes) == per_expert


def test_turns_and_stopping(tiny, tmp_path):
    _, store = tiny
    model, _ = moe.load(store, slots_per_layer=TOP_K)
    rec = record(model, tmp_path / "t.route.csv")
    with pytest.raises(ValueError, match="already records"):
        record(model, tmp_path / "u.route.csv")
    _run(model, 3, 1)
    rec.new_turn()
    _run(model, 2, 2)
    before = [np.array(model(mx.array([[4]], dtype=mx.int32)).astype(mx.float32))]
    stop(model)
    trace = load_route_trace(tmp_path / "t.route.csv")
    assert [(s.turn, s.phase, s.step) for s in trace.steps] == [
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 3), (1, 0, 4), (1, 0, 5), (1, 1, 6), (1, 1, 7), (1, 1, 8)]
    assert rec.tokens == 9
    after = np.array(model(mx.array([[4]], dtype=mx.int32)).astype(mx.float32))
    assert np.array_equal(before[0], after)  # the recorder passes ids on unchanged


def test_cli_generate_records_a_trace(tiny, tmp_path):
    _, store = tiny
    path = tmp_path / "gen.route.csv"
    r = CliRunner().invoke(main, ["generate", "--model", str(store), "-p", "hello there", "-m", "3",
                                  "--slots-per-layer", str(TOP_K), "--record-trace", str(path)])  # fmt: skip
    assert r.exit_code == 0, r.output
    trace = load_route_trace(path)
    assert f"recorded {len(trace.steps)} tokens x {trace.n_layer} MoE layers to {path}" in r.output
    assert trace.prompt_steps() and len(trace.generation_steps()) >= 3
    r = CliRunner().invoke(main, ["generate", "--model", str(store), "-m", "1",
                                  "--record-trace", str(tmp_path / "no" / "such" / "dir.csv")])  # fmt: skip
    assert r.exit_code == 1 and "Error: cannot write the trace" in r.output and "Traceback" not in r.output
    (tmp_path / "notes.txt").write_text("my notes")
    r = CliRunner().invoke(main, ["generate", "--model", str(store), "-m", "1",
                                  "--record-trace", str(tmp_path / "notes.txt")])  # fmt: skip
    assert r.exit_code == 1 and "is not a route trace (refusing to replace it)" in r.output
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    r = CliRunner().invoke(main, ["generate", "--model", str(store), "-p", "again", "-m", "2",
                                  "--slots-per-layer", str(TOP_K), "--record-trace", str(path)])  # fmt: skip
    assert r.exit_code == 0, r.output  # a previous trace is replaced


def test_server_records_one_turn_per_request(tiny, tmp_path):
    import http.client
    import json
    import threading

    from mlxstore.moe.server import ServeOptions, make_server

    _, store = tiny
    model, tokenizer = moe.load(store, slots_per_layer=TOP_K)
    rec = record(model, tmp_path / "serve.route.csv")
    httpd, state = make_server(model, tokenizer, "tiny", ServeOptions(port=0, max_context=256, max_tokens=3))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        for text in ("w1 w2 w3", "w4 w5"):
            conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=60)
            body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 3}
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
        state.generator.stop_and_join()
        stop(model)
    trace = load_route_trace(rec.path)
    turns = [s.turn for s in trace.steps]
    assert sorted(set(turns)) == [0, 1] and turns == sorted(turns)
    assert trace.prompt_steps() and len(trace.generation_steps()) >= 6

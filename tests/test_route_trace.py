"""Route-trace reader: structure of parsed traces and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from mlxstore.formats.route_trace import (
    GENERATION,
    PROMPT,
    format_preamble,
    format_rows,
    load_route_trace,
    parse_route_trace,
)
from mlxstore.traces import BUNDLED_DIR, find_trace, trace_name, traces

PREAMBLE = """# route_trace v1
# model=/m/x.gguf arch=toy n_layer=2 n_expert=4 n_expert_used=2
# layer=0 expert_bytes=100 dense_bytes=7
# layer=1 expert_bytes=200 dense_bytes=8
turn,phase,step,layer,slot,expert,weight,residency,expert_bytes
"""

ROWS = """0,0,0,0,0,1,0.6,0,100
0,0,0,0,1,2,0.4,0,100
0,0,1,0,0,3,0.5,0,0
0,0,1,0,1,1,0.5,0,100
0,0,1,1,0,0,0.7,0,200
0,0,1,1,1,2,0.3,0,200
0,1,2,0,0,2,0.9,1,0
0,1,2,0,1,0,0.1,0,100
0,1,2,1,0,3,0.8,0,200
0,1,2,1,1,1,0.2,0,200
"""


def parse(text: str):
    return parse_route_trace(text.splitlines())


def test_structure() -> None:
    t = parse(PREAMBLE + ROWS)
    assert (t.model, t.arch, t.n_layer, t.n_expert, t.top_k) == ("/m/x.gguf", "toy", 2, 4, 2)
    assert t.expert_bytes == (100, 200) and t.dense_bytes == (7, 8)
    assert [(s.phase, s.step) for s in t.steps] == [(PROMPT, 0), (PROMPT, 1), (GENERATION, 2)]
    assert t.steps[0].experts == ((1, 2), ())  # layer 1 has no rows at step 0
    assert t.steps[1].weights[1] == (0.7, 0.3)
    assert [s.step for s in t.generation_steps()] == [2]
    assert [s.step for s in t.prompt_steps()] == [0, 1]
    assert t.layer_calls(0) == [(1, 2), (3, 1), (2, 0)]
    assert t.layer_calls(1) == [(0, 2), (3, 1)]
    assert t.generation_calls(1) == [(3, 1)]
    assert t.num_accesses() == 10 and t.num_accesses((GENERATION,)) == 4
    with pytest.raises(ValueError):
        t.layer_calls(2)


def test_layer_major_prompt_keeps_step_order() -> None:
    """Prompt rows come layer-major; steps are grouped across layers by (turn, phase, step)."""
    rows = "\n".join(
        f"0,0,{step},{layer},{slot},{(step + slot + layer) % 4},0.5,0,0"
        for layer in range(2) for step in range(3) for slot in range(2)
    )
    t = parse(PREAMBLE + rows)
    assert [s.step for s in t.steps] == [0, 1, 2]
    assert all(len(s.experts[0]) == 2 and len(s.experts[1]) == 2 for s in t.steps)


def test_bytes_fall_back_to_rows_without_preamble_layers() -> None:
    text = PREAMBLE.replace("# layer=0 expert_bytes=100 dense_bytes=7\n", "")
    t = parse(text + ROWS)
    assert t.expert_bytes == (100, 200) and t.dense_bytes == (0, 8)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("", 0, "no CSV header"),
        (PREAMBLE, 5, "no rows"),
        (PREAMBLE.replace("n_expert_used=2", ""), 5, "n_expert_used"),
        (PREAMBLE.replace("slot,", ""), 5, "missing ['slot']"),
        (PREAMBLE + "0,0,0,0,0,1,0.6,0\n", 6, "expected 9 fields, got 8"),
        (PREAMBLE + "0,0,0,0,0,x,0.6,0,1\n", 6, "expert is not an integer"),
        (PREAMBLE + "0,0,0,0,0,1,abc,0,1\n", 6, "weight is not a number"),
        (PREAMBLE + "0,2,0,0,0,1,0.5,0,1\n", 6, "phase must be 0"),
        (PREAMBLE + "0,0,0,5,0,1,0.5,0,1\n", 6, "layer 5 out of range"),
        (PREAMBLE + "0,0,0,0,0,4,0.5,0,1\n", 6, "expert 4 out of range"),
        (PREAMBLE + "0,0,0,0,2,1,0.5,0,1\n", 6, "slot 2 out of range"),
        (PREAMBLE + "0,0,0,0,1,1,0.5,0,1\n", 6, "slot 1 out of order"),
        (PREAMBLE + "0,0,0,0,0,1,0.5,0,1\n0,0,0,0,1,1,0.5,0,1\n", 7, "expert 1 repeated"),
        (PREAMBLE + "0,0,0,0,0,1,0.5,0,-3\n", 6, "negative expert_bytes"),
        (PREAMBLE.replace("layer=1 ", "layer=0 "), 4, "layer 0 described twice"),
        (PREAMBLE.replace("layer=1 ", "layer=9 "), 5, "outside [0, 2)"),
        (PREAMBLE.replace("n_layer=2", "n_layer=0"), 5, "bad preamble sizes"),
    ],
)
def test_bad_input_names_line_and_problem(text: str, line: int, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse(text)
    assert f"line {line}:" in str(err.value)
    assert message in str(err.value)


def test_load_names_file(tmp_path: Path) -> None:
    p = tmp_path / "t.route.csv"
    p.write_text(PREAMBLE + ROWS)
    assert load_route_trace(p).n_layer == 2
    p.write_text(PREAMBLE + "0,0,0,0,0,9,0.6,0,100\n")
    with pytest.raises(ValueError, match=r"t\.route\.csv: route trace line 6: expert 9"):
        load_route_trace(p)


def test_real_traces() -> None:
    q = load_route_trace(find_trace("qwen3-30b-a3b"))
    assert (q.n_layer, q.n_expert, q.top_k) == (48, 128, 6)
    assert len(q.prompt_steps()) == 28 and len(q.generation_steps()) == 128
    assert all(len(c) == 6 for c in q.generation_calls(47))
    assert len(q.layer_calls(47)) == 129  # llama.cpp runs the last layer for the last prompt token only
    g = load_route_trace(find_trace("gpt-oss-120b"))
    assert (g.n_layer, g.n_expert, g.top_k) == (36, 128, 2)
    assert len(g.prompt_steps()) == 85 and len(g.generation_steps()) == 64
    assert g.expert_bytes[0] == 13219200


def test_written_trace_reads_back(tmp_path: Path) -> None:
    text = format_preamble(model="my model", arch="toy", n_layer=2, n_expert=4, top_k=2,
                           expert_bytes=[100, 200], dense_bytes=[7, 8])  # fmt: skip
    text += format_rows(0, PROMPT, 0, 0, [3, 1], [0.75, 0.25]) + format_rows(0, PROMPT, 0, 1, [0, 2])
    text += format_rows(0, GENERATION, 1, 0, [2, 3]) + format_rows(0, GENERATION, 1, 1, [1, 0])
    t = parse_route_trace(text.splitlines())
    assert (t.model, t.n_layer, t.n_expert, t.top_k) == ("my_model", 2, 4, 2)
    assert t.expert_bytes == (100, 200) and t.dense_bytes == (7, 8)
    assert t.layer_calls(0) == [(3, 1), (2, 3)] and t.generation_calls(1) == [(1, 0)]
    assert t.steps[0].weights[0] == (0.75, 0.25)


def test_zst_trace_reads_like_the_csv(tmp_path: Path) -> None:
    plain = tmp_path / "t.route.csv"
    plain.write_text(PREAMBLE + ROWS)
    packed = tmp_path / "t.route.csv.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    assert load_route_trace(packed) == load_route_trace(plain)
    packed.write_bytes(b"not zstd at all")
    with pytest.raises(ValueError, match=r"t\.route\.csv\.zst: cannot read the trace"):
        load_route_trace(packed)


def test_bundled_traces_resolve_inside_the_package(monkeypatch) -> None:
    """A fresh clone or install finds the traces without ../shared or MLXSTORE_TRACES."""
    monkeypatch.delenv("MLXSTORE_TRACES", raising=False)
    repo = Path(__file__).resolve().parents[1]
    found = traces()
    assert [trace_name(p) for p in found] == ["gpt-oss-120b", "qwen3-30b-a3b"]
    assert all(p.is_relative_to(repo) and p.parent == BUNDLED_DIR for p in found)
    assert (BUNDLED_DIR / "README.md").read_text().count("Apache-2.0")
    for name in ("qwen3-30b-a3b", "qwen3-30b-a3b.route.csv", "gpt-oss-120b.route.csv.zst"):
        assert find_trace(name).parent == BUNDLED_DIR
    with pytest.raises(FileNotFoundError, match="bundled traces: gpt-oss-120b, qwen3-30b-a3b"):
        find_trace("nope")


def test_trace_folder_override(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mine.route.csv").write_text(PREAMBLE + ROWS)
    monkeypatch.setenv("MLXSTORE_TRACES", str(tmp_path))
    assert [p.name for p in traces()] == ["mine.route.csv"]
    assert find_trace("mine") == tmp_path / "mine.route.csv"
    assert find_trace("qwen3-30b-a3b").parent == BUNDLED_DIR  # still found

"""The advisor: replayed routing at each budget gives hit rates, missed bytes and tok/s that
follow from the trace; mismatched traces are refused or mapped as documented."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxstore
from mlxstore import moe
from mlxstore.formats import StoreError
from mlxstore.formats.route_trace import load_route_trace
from mlxstore.moe.advisor import (
    OPTIMUM,
    AdviseOptions,
    advise_store,
    budget_range,
    format_advice,
    knee,
    least_budget,
    map_trace,
    plot_advice,
    probe_reads,
    shape_of,
)
from mlxstore.moe.plan import smallest_budget
from mlxstore.moe.policy import POLICIES
from mlxstore.moe.record import record, stop
from mlxstore.moe.spec import from_config, from_store
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir
from mlxstore.traces import find_trace

WIDE = {"num_hidden_layers": 3, "num_experts": 128, "num_experts_per_tok": 8, "hidden_size": 64,
        "moe_intermediate_size": 64, "vocab_size": 256}  # fmt: skip


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A qwen3_moe store with the real traces' 128 experts per layer (top-8, 3 layers)."""
    root = tmp_path_factory.mktemp("advisor")
    src = make_model_dir("qwen3_moe", root / "src", config_overrides=WIDE, seed=1)
    return pack(src, root / "wide", progress=False)


def _first_touch_misses(calls, counted) -> int:
    seen, misses = set(), 0
    for call, c in zip(calls, counted):
        new = set(call) - seen
        misses += len(new) if c else 0
        seen |= new
    return misses


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "gpt-oss-120b"])
def test_bundled_traces_on_a_store(wide, name):
    trace = load_route_trace(find_trace(name))
    with mlxstore.open(wide) as s:
        spec = from_store(s)
        shape = shape_of(spec, s)
        budgets = budget_range(spec, 5) + [1 << 30]
        options = AdviseOptions(budgets=tuple(budgets), disk_gbps=2.0, compute_ms=10.0)
        advice = advise_store(s, trace, options, name=name)
    assert (shape.num_layers, shape.num_experts, shape.top_k) == (3, 128, 8)
    assert any(f"the trace has {trace.n_layer} MoE layers, the model 3" in n for n in advice.notes)
    assert any(f"the trace has {trace.top_k} experts per token, the model 8" in n for n in advice.notes)
    assert sorted({r.budget for r in advice.rows}) == budgets
    assert [spec.plan(b).slots_per_layer for b in (budgets[0], budgets[-1])] == [8, 128]
    assert [r.slots for r in advice.rows if r.policy == "lru"] == [spec.plan(b).slots_per_layer for b in budgets]
    layers, _ = map_trace(trace, shape, "warm")
    for b in budgets:
        rows = {r.policy: r for r in advice.rows if r.budget == b}
        assert set(rows) == set(POLICIES) | {OPTIMUM}
        assert all(r.hit_rate <= rows[OPTIMUM].hit_rate + 1e-12 for r in rows.values())
    full = [r for r in advice.rows if r.budget == budgets[-1]]
    misses = [_first_touch_misses(r.calls, r.counted) for r in layers]  # every expert fits: first touches only
    accesses = sum(r.accesses for r in layers)
    tokens = len(trace.generation_steps())
    missed = sum(m * b for m, b in zip(misses, shape.read_bytes)) / tokens
    for r in full:
        assert r.hit_rate == pytest.approx(1 - sum(misses) / accesses)
        assert r.missed_mb_per_token == pytest.approx(missed / 1e6)
        assert r.tok_s == pytest.approx(1 / (0.010 + missed / 2e9))
        assert r.tok_s_overlap == pytest.approx(1 / max(0.010, missed / 2e9))
    optimum = [r.hit_rate for r in advice.rows if r.policy == OPTIMUM]
    assert optimum == sorted(optimum) and optimum[0] < optimum[-1]
    assert advice.knee is not None and advice.knee.policy == advice.default_policy
    table = format_advice(advice)
    assert "<- knee" in table and "disk 2.00 GB/s (given)" in table and f"trace {name}" in table


def test_a_recorded_trace_replays_without_mapping(tmp_path):
    src = make_model_dir("qwen3_moe", tmp_path / "src", seed=4)
    store = pack(src, tmp_path / "s", progress=False)
    model, _ = moe.load(store, slots_per_layer=4)
    rec = record(model, tmp_path / "mine.route.csv")
    y = model(mx.array(np.arange(3, 40)[None], dtype=mx.int32))
    for _ in range(6):
        y = model(mx.argmax(y[:, -1:], axis=-1).astype(mx.int32))
    mx.eval(y)
    stop(model)
    trace = load_route_trace(rec.path)
    with mlxstore.open(store) as s:
        advice = advise_store(s, trace, AdviseOptions(points=4, compute_ms=1.0, probe_seconds=0.5))
        shape = shape_of(from_store(s), s)
    assert advice.notes == [] and advice.disk_measured and advice.disk_gbps > 0
    assert advice.tokens == 6
    layers, _ = map_trace(trace, shape)
    assert [r.calls for r in layers] == [trace.layer_calls(n) for n in range(shape.num_layers)]
    budgets = sorted({r.budget for r in advice.rows})
    for policy in ("lru", OPTIMUM):
        rates = [r.hit_rate for b in budgets for r in advice.rows if r.budget == b and r.policy == policy]
        assert len(rates) == len(budgets) and 0 <= rates[0] <= rates[-1] <= 1


def test_expert_count_mismatch_is_one_line(tmp_path, store_dir):
    with mlxstore.open(store_dir("qwen3_moe")) as s:
        n = from_store(s).num_experts
        with pytest.raises(ValueError, match=f"the trace routes over 128 experts per layer, the model has {n}: "
                                             "replay needs a trace of this model"):  # fmt: skip
            advise_store(s, load_route_trace(find_trace("qwen3-30b-a3b")), AdviseOptions(disk_gbps=1.0))


def test_budgets_below_the_minimum_and_unknown_policies(wide):
    trace = load_route_trace(find_trace("qwen3-30b-a3b"))
    with mlxstore.open(wide) as s:
        spec = from_store(s)
        low = least_budget(spec.plan)
        assert spec.plan(low).slots_per_layer == 8 and low <= smallest_budget(spec.plan)
        with pytest.raises(StoreError, match="too small"):
            advise_store(s, trace, AdviseOptions(budgets=(low - 1,), disk_gbps=1.0))
        with pytest.raises(ValueError, match="unknown policy 'nope'"):
            advise_store(s, trace, AdviseOptions(policies=("nope",), disk_gbps=1.0))


def test_read_probe_reads_store_extents(wide):
    with mlxstore.open(wide) as s:
        sizes = {x.length for g in s.expert_groups.values() for x in g.extents}
        probe = probe_reads(s, seconds=30, max_reads=6, threads=2)
        assert probe.reads == 6 and probe.bytes in {6 * n for n in sizes} and probe.gbps > 0
        capped = probe_reads(s, seconds=0.0, max_reads=6)
        assert capped.reads == 0 and capped.gbps == 0.0


def test_knee():
    xs = list(range(11))
    assert knee(xs, [min(x, 3) for x in xs]) == 3
    assert knee(xs, [1 - 0.5 ** x for x in xs]) == 3  # 0.875 - 0.3 is the largest gap above the chord
    assert knee([1, 2], [0.1, 0.2]) == 1


def test_plot_is_written(wide, tmp_path):
    trace = load_route_trace(find_trace("gpt-oss-120b"))
    with mlxstore.open(wide) as s:
        advice = advise_store(s, trace, AdviseOptions(points=3, disk_gbps=1.0, policies=("lru", "lrfu")))
    plot_advice(advice, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_from_a_config_alone(wide, fill):
    """Without a store there is no disk to probe: the speed must be given; reads are the spec's.
    A staged fill (a GPU's) counts buffers sized by the largest expert, the same from either."""
    import json

    config = json.loads((wide.parent / "src" / "config.json").read_text())
    spec = from_config(config, "config.json")
    trace = load_route_trace(find_trace("qwen3-30b-a3b"))
    with pytest.raises(ValueError, match="is a config, not a store: there is no disk to probe"):
        from mlxstore.moe.advisor import advise_model

        advise_model(spec, trace, AdviseOptions(points=3))
    advice = advise_model(spec, trace, AdviseOptions(points=3, disk_gbps=1.0), fill=fill)
    assert shape_of(spec).read_bytes == (spec.expert_bytes // 3,) * 3
    with mlxstore.open(wide) as s:
        stored = advise_store(s, trace, AdviseOptions(points=3, disk_gbps=1.0), fill=fill)
    assert [r.hit_rate for r in advice.rows] == pytest.approx([r.hit_rate for r in stored.rows])


def test_cli_plan_with_a_trace(wide, tmp_path):
    import json

    from click.testing import CliRunner

    from mlxstore.cli.main import main

    run = CliRunner().invoke
    png = tmp_path / "budget.png"
    r = run(main, ["plan", str(wide), "--trace", "qwen3-30b-a3b", "--points", "4", "--resident-ms", "20",
                   "--policies", "lru,lrfu,belady", "--png", str(png)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "trace qwen3-30b-a3b:" in r.output and "(measured)" in r.output and "<- knee" in r.output
    assert "note: the trace has 48 MoE layers, the model 3" in r.output and f"wrote {png}" in r.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = run(main, ["plan", str(wide), "--trace", "gpt-oss-120b", "--budgets", "80MB,90MB", "--disk-gbps", "3",
                   "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    advice = json.loads(r.output)["advice"]
    assert {row["budget"] for row in advice["rows"]} == {80_000_000, 90_000_000} and advice["disk_gbps"] == 3
    r = run(main, ["plan", str(wide.parent / "src" / "config.json"), "--trace", "qwen3-30b-a3b", "--points", "3"])
    assert r.exit_code == 1 and "Error: " in r.output and "pass the disk's read speed (--disk-gbps)" in r.output
    r = run(main, ["plan", str(wide.parent / "src" / "config.json"), "--trace", "qwen3-30b-a3b", "--points", "3",
                   "--disk-gbps", "2"])  # fmt: skip
    assert r.exit_code == 0 and "disk 2.00 GB/s (given)" in r.output, r.output


def test_cli_plan_trace_errors(wide, store_dir, tmp_path):
    from click.testing import CliRunner

    from mlxstore.cli.main import main

    run = CliRunner().invoke
    cases = [
        ([str(store_dir("qwen3_moe")), "--trace", "qwen3-30b-a3b"], "the trace routes over 128 experts per layer"),
        ([str(wide), "--trace", "nope"], "no trace file 'nope' (bundled traces: gpt-oss-120b, qwen3-30b-a3b)"),
        ([str(wide), "--trace", "qwen3-30b-a3b", "--budgets", "lots"], "--budgets:"),
        ([str(wide), "--trace", "qwen3-30b-a3b", "--policies", "bogus", "--disk-gbps", "1"], "unknown policy 'bogus'"),
        ([str(wide), "--png", str(tmp_path / "x.png")], "--png need --trace FILE"),
    ]
    for args, message in cases:
        r = run(main, ["plan", *args])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)
    bad = tmp_path / "bad.route.csv"
    bad.write_text("# route_trace v1\nnot a header\n")
    r = run(main, ["plan", str(wide), "--trace", str(bad)])
    assert r.exit_code == 1 and "bad.route.csv: route trace line 2" in r.output

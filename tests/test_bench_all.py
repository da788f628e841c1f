"""`python -m bench all` end to end at toy scale: every target measured, JSON and PNG written."""

from __future__ import annotations

import json

import pytest

from bench.commands.all import run_all
from bench.harness.context import Ctx
from bench.harness.policy_sim import default_trace
from bench.harness.scale import SCALES
from bench.harness.sides import Side, run_sides
from bench.harness.targets import TARGETS
from mlxstore.moe.options import PAGE_CACHE_MODES
from mlxstore.moe.streaming import PREFETCH_MODES

TRACE = default_trace()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    results = run_all("toy", tmp_path / "out", tmp_path / "work", TRACE, echo=lambda m: None)
    return tmp_path, results


def test_toy_run_writes_every_target(toy_run):
    tmp_path, results = toy_run
    saved = json.loads((tmp_path / "out" / "latest.json").read_text())
    assert set(TARGETS) <= set(saved)
    assert not saved["details"].get("errors"), saved["details"].get("errors")
    for tid in TARGETS:
        entry = saved[tid]
        assert {"value", "target", "met"} <= set(entry)
        assert entry["value"] is not None, (tid, entry)
    for tid in ("P1", "P2", "P3", "P4", "P5", "P6", "P7"):
        assert isinstance(saved[tid]["value"], float) and saved[tid]["met"] in (True, False)
    d = saved["details"]
    assert d["P3"]["missed_expert_bytes"] > 0  # the miss-heavy run did miss
    assert d["P2"]["raw"]["bytes"] == d["P2"]["bytes_read"]  # raw replay read the same bytes
    assert d["P4"]["plan"]["slots_per_layer"] >= 8
    assert len(d["prefetch_table"]["rows"]) == len(PREFETCH_MODES) * len(PAGE_CACHE_MODES)
    assert d["prefetch_table"]["rows"]["next-layer-read-keep"]["prefetch_issued"] > 0
    assert all(r.get("tok_per_s") for r in d["prefetch_table"]["rows"].values())
    assert [p["slots_per_layer"] for p in d["budget_curve"]["points"]] == [8, 128]
    assert results["png"] and (tmp_path / "out" / "latest-budget.png").stat().st_size > 0


def test_sides_one_after_another(toy_run):
    """Full scale runs sides sequentially (they do not fit in memory together)."""
    tmp_path, _ = toy_run
    ctx = Ctx(SCALES["toy"], tmp_path / "work" / "src", tmp_path / "work" / "model.store", TRACE,
              tmp_path / "work")  # fmt: skip
    sides = [Side("seq-resident", ctx.resident()), Side("seq-streamed", ctx.streamed(slots=8))]
    run_sides(sides, prompt=ctx.prompt(), warmup=1, tokens=2, logs=ctx.logs, interleave=False)
    for s in sides:
        assert s.result["decode"]["tokens"] == 2 and s.result["exit"]["returncode"] == 0
    assert sides[1].result["decode"]["stats"]["misses"] > 0

"""`bench policy`: replay numbers on a hand-made trace, and the README's LRU figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.commands.policy import command
from bench.harness.policy_sim import SLOTS, default_trace, readme_check, simulate
from mlxstore.formats.route_trace import load_route_trace, parse_route_trace
from mlxstore.moe.policy import DEFAULT_POLICY

HEADER = """# model=toy arch=toy n_layer=1 n_expert=8 n_expert_used=1
turn,phase,step,layer,slot,expert,weight,residency,expert_bytes
"""


def toy_trace(prompt: list[int], gen: list[int]):
    rows = [f"0,0,{i},0,0,{e},1,0,0" for i, e in enumerate(prompt)]
    rows += [f"0,1,{len(prompt) + i},0,0,{e},1,0,0" for i, e in enumerate(gen)]
    return parse_route_trace((HEADER + "\n".join(rows)).splitlines())


def test_scenarios_on_hand_made_trace() -> None:
    t = toy_trace(prompt=[1, 2], gen=[1, 3, 1, 2])
    r = simulate(t, ["lru"], [1, 2])["scenarios"]
    # gen only, 2 slots: 1 miss, 3 miss, 1 hit, 2 miss (evicts 3) -> 1/4
    assert r["gen"]["2"]["lru"]["hit_rate"] == 0.25
    # prompt then gen, all counted: 1 m, 2 m, 1 h, 3 m (evict 2), 1 h, 2 m -> 2/6
    assert r["all"]["2"]["lru"]["hit_rate"] == pytest.approx(2 / 6)
    # warm: same replay, only the gen accesses count -> 2/4
    assert r["warm"]["2"]["lru"]["hit_rate"] == 0.5
    assert r["gen"]["1"]["belady"] == 0.0 and r["gen"]["2"]["belady"] >= 0.25
    for scen in r.values():
        for row in scen.values():
            assert row["lru"]["vs_belady"] <= 1.0


@pytest.mark.parametrize("name", ["qwen3-30b-a3b.route.csv", "gpt-oss-120b.route.csv"])
def test_readme_lru_figures_and_default_beats_lru(name: str) -> None:
    result = simulate(load_route_trace(default_trace(name)), ["lru", DEFAULT_POLICY], SLOTS)
    check = readme_check(name, result)
    assert check is not None and check["match"], check
    for row in result["scenarios"]["gen"].values():
        assert row[DEFAULT_POLICY]["hit_rate"] >= row["lru"]["hit_rate"] - 0.002


def test_cli_writes_json(tmp_path: Path) -> None:
    trace = tmp_path / "toy.route.csv"
    trace.write_text(HEADER + "\n".join(f"0,1,{i},0,0,{i % 3},1,0,0" for i in range(9)) + "\n")
    out = tmp_path / "p.json"
    res = CliRunner().invoke(command, ["--trace", str(trace), "--slots", "1,2",
                                       "--policies", "lru,lrfu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["traces"]["toy.route.csv"]["scenarios"]["gen"]["2"]["lru"]["hit_rate"] == 0.0

"""P6: hit rate of the default slot policy on the real traces relative to Belady's optimum.

Replays generation rows (a fresh cache per layer, as the traces' README computes its
figures) through bench/harness/policy_sim.py at 8, 16 and 32 slots per layer; the target is met
when the worst (trace, slots) ratio is.
"""

from __future__ import annotations

from pathlib import Path

from bench.harness.policy_sim import default_traces, report_name, simulate
from bench.harness.targets import verdict
from mlxstore.formats.route_trace import load_route_trace
from mlxstore.moe.policy import DEFAULT_POLICY

SLOTS = (8, 16, 32)


def p6(traces: list[Path] | None = None, scenario: str = "gen") -> tuple[dict, dict]:
    rows: dict = {}
    worst = None
    for path in traces or default_traces():
        result = simulate(load_route_trace(path), [DEFAULT_POLICY, "lru"], SLOTS)
        for slots, row in result["scenarios"][scenario].items():
            ratio = row[DEFAULT_POLICY]["vs_belady"]
            rows[f"{report_name(path)}@{slots}"] = {"belady": row["belady"],
                                            "default": row[DEFAULT_POLICY]["hit_rate"],
                                            "lru": row["lru"]["hit_rate"], "ratio": ratio}  # fmt: skip
            worst = ratio if worst is None else min(worst, ratio)
    details = {"policy": DEFAULT_POLICY, "scenario": scenario, "slots": list(SLOTS), "rows": rows}
    return verdict("P6", worst, f"worst of {len(rows)} (trace, slots) pairs"), details

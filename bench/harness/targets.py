"""The targets of issue 4 (P1-P8): what each ratio means, its bound, and whether it is met.

Why a table of data: the harness, the report and the tests must agree on one definition
of every target; each is a ratio of two things measured side by side in one run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    id: str
    metric: str
    op: str  # ">=", "<=" or "report"
    bound: float | None


TARGETS = {t.id: t for t in (
    Target("P1", "decode tok/s streamed, every expert fits / resident mlx-lm", ">=", 0.98),
    Target("P2", "expert bytes/s in miss-heavy decode / raw parallel pread of the same extents",
           ">=", 0.90),
    Target("P3", "bytes read from disk / bytes of missed experts (prefetch apart)", "<=", 1.05),
    Target("P4", "decode tok/s, model 3x the memory cap / min(resident tok/s, "
                 "raw GB/s / missed GB per token)", ">=", 0.85),
    Target("P5", "prompt tok/s, 512-token prompt in batches / one token at a time", ">=", 5.0),
    Target("P6", "hit rate of the default policy / Belady, real traces, 8/16/32 slots", ">=", 0.90),
    Target("P7", "`mlxstore pack` GB/s / `cp` GB/s of the same bytes", ">=", 0.80),
    Target("P8", "mlx-lm under the same memory cap as P4 (OOM or tok/s)", "report", None),
)}  # fmt: skip


def verdict(target_id: str, value: float | str | None, note: str = "") -> dict:
    """`{"value", "target", "met", "metric", "note"}` for one measured figure."""
    t = TARGETS[target_id]
    if t.op == "report" or not isinstance(value, (int, float)):
        met = None if t.op == "report" else False
        target = "report" if t.op == "report" else f"{t.op} {t.bound}"
    else:
        met = value >= t.bound if t.op == ">=" else value <= t.bound
        target = f"{t.op} {t.bound}"
    return {"value": value, "target": target, "met": met, "metric": t.metric, "note": note}

"""Side-by-side sweeps: prefetch mode x page-cache policy under P4's cap, and decode tok/s
and hit rate against the memory budget.

Why under the cap: whether keeping read pages in the OS cache or prefetching pays off
depends on memory pressure; with the model 3x the cap, as in P4, the page cache is as
scarce as on the machine that needs streaming. Every run gets a private copy of the store
(where disk space allows) so none can hit pages another read or prefetched.
"""

from __future__ import annotations

from pathlib import Path

from bench.harness.context import Ctx
from bench.harness.prepare import drop_tree_cache, store_copies
from bench.harness.sides import Side, run_sides
from bench.stages.decode_targets import profile
from mlxstore.moe.options import PAGE_CACHE_MODES
from mlxstore.moe.streaming import PREFETCH_MODES


def _row(side: Side) -> dict:
    d = side.result.get("decode") or {}
    st = d.get("stats", {})
    n = max(1, d.get("tokens", 0))
    plan = (side.result.get("load") or {}).get("plan") or {}
    return {**profile(side), "slots_per_layer": plan.get("slots_per_layer"),
            "disk_gb_per_token": d.get("io_read_bytes", 0) / n / 1e9,
            "prefetch_issued": st.get("prefetch_issued", 0), "prefetch_used": st.get("prefetch_used", 0),
            "ahead_used": st.get("ahead_used", 0), "ahead_paused": st.get("ahead_paused", 0),
            "prefetch_gb_per_token": st.get("prefetch_bytes", 0) / n / 1e9,
            "died": side.result.get("died"), "peak_bytes": (side.result.get("exit") or {}).get("peak_bytes")}  # fmt: skip


def prefetch_table(ctx: Ctx) -> dict:
    sc, cap = ctx.scale, ctx.cap
    configs = [(p, c) for p in PREFETCH_MODES for c in PAGE_CACHE_MODES]
    copies = store_copies(ctx.store, ctx.work / "copies", len(configs)) if sc.table_copies else []
    sides = []
    for i, (prefetch, page_cache) in enumerate(configs):
        store: Path = copies[i] if copies else ctx.store
        load = ctx.streamed(cap=cap, prefetch=prefetch, page_cache=page_cache, path=str(store))
        sides.append(Side(f"table-{prefetch}-{page_cache}", load, cap=cap))

    def cold() -> None:
        ctx.cold()
        for c in copies:
            drop_tree_cache(c)

    run_sides(sides, prompt=ctx.prompt(), warmup=sc.sweep_warmup, tokens=sc.sweep_tokens, logs=ctx.logs,
              interleave=sc.lockstep, before=cold)  # fmt: skip
    rows = {s.name.removeprefix("table-"): _row(s) for s in sides}
    ok = {k: v for k, v in rows.items() if v.get("tok_per_s")}
    best = max(ok, key=lambda k: ok[k]["tok_per_s"]) if ok else None
    return {"rows": rows, "best_by_tok_s": best, "cap_bytes": cap, "interleaved": sc.lockstep,
            "private_store_copies": bool(copies)}  # fmt: skip


def budget_curve(ctx: Ctx) -> dict:
    """Decode tok/s and hit rate at each bank size (page_cache drop: every miss is a disk read),
    with resident mlx-lm interleaved as the reference line."""
    sc = ctx.scale
    sides = [Side(f"curve-{n}", ctx.streamed(slots=n, page_cache="drop")) for n in sc.curve_slots]
    resident = Side("curve-resident", ctx.resident())
    run_sides([*sides, resident], prompt=ctx.prompt(), warmup=sc.sweep_warmup, tokens=sc.sweep_tokens,
              logs=ctx.logs, interleave=sc.lockstep, before=ctx.cold)  # fmt: skip
    points = []
    for n, s in zip(sc.curve_slots, sides):
        plan = (s.result.get("load") or {}).get("plan") or {}
        points.append({"slots_per_layer": n, "budget_bytes": plan.get("total_bytes"), **_row(s)})
    return {"points": points, "resident_tok_s": _row(resident).get("tok_per_s"), "interleaved": sc.lockstep}

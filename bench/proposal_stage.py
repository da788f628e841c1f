"""Stage "proposals" (opt-in): streaming variants (bench/proposals/overlap.py) measured side
by side with the shipped module on P1's and P4's setups, with resident mlx-lm interleaved.

Why in the harness: a proposal to moe/ comes with the same kind of evidence as a target,
ratios from one interleaved run, so the lead can rerun it after adopting it.
"""

from __future__ import annotations

from bench.context import Ctx
from bench.decode_targets import paired_median, profile
from bench.prepare import drop_tree_cache, store_copies
from bench.sides import Side, run_sides

CAPPED = (None, "serial")  # shipped, pre-overlap decode path
ALL_FIT = (None,)


def proposals(ctx: Ctx) -> dict:
    sc, cap = ctx.scale, ctx.cap
    copies = store_copies(ctx.store, ctx.work / "copies", len(CAPPED)) if sc.table_copies else []
    resident = Side("prop-resident", ctx.resident())
    sides = [resident]
    for v in ALL_FIT:
        sides.append(Side(f"prop-allfit-{v or 'shipped'}", ctx.streamed(slots=sc.experts, preload_all=True, variant=v)))
    for i, v in enumerate(CAPPED):
        path = str(copies[i]) if copies else str(ctx.store)
        sides.append(Side(f"prop-capped-{v or 'shipped'}", ctx.streamed(cap=cap, variant=v, path=path), cap=cap))

    def cold() -> None:
        ctx.cold()
        for c in copies:
            drop_tree_cache(c)

    run_sides(sides, prompt=ctx.prompt(), warmup=sc.warmup, tokens=sc.tokens, logs=ctx.logs,
              interleave=sc.lockstep, before=cold)  # fmt: skip
    res = profile(resident).get("tok_per_s")
    rows = {}
    for s in sides[1:]:
        p = profile(s)
        rows[s.name.removeprefix("prop-")] = {**p, "vs_resident": p.get("tok_per_s", 0) / res if res else None,
                                              "paired_median": paired_median(resident, s) if sc.lockstep else None}  # fmt: skip
    return {"rows": rows, "resident": profile(resident), "interleaved": sc.lockstep}

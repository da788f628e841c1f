"""Stage "proposals" (opt-in): the proposed streaming changes (bench/proposals/overlap.py)
measured side by side with the shipped module, on P4's and P5's setups.

Why in the harness: a proposal to moe/ comes with the same kind of evidence as a target,
a ratio from one interleaved run, so the lead can rerun it after adopting it.
"""

from __future__ import annotations

from bench.context import Ctx
from bench.decode_targets import profile
from bench.prompt_target import _split_pair
from bench.sides import Side, run_sides


def proposals(ctx: Ctx, p5_tokens: int | None = None) -> dict:
    sc, cap = ctx.scale, ctx.cap
    sides = [Side("prop-capped", ctx.streamed(cap=cap), cap=cap),
             Side("prop-capped-overlap", ctx.streamed(cap=cap, variant="overlap"), cap=cap),
             Side("prop-resident", ctx.resident())]  # fmt: skip
    run_sides(sides, prompt=ctx.prompt(), warmup=sc.warmup, tokens=sc.tokens, logs=ctx.logs,
              interleave=sc.lockstep, before=ctx.cold)  # fmt: skip
    prof = {s.name: profile(s) for s in sides}
    res = prof["prop-resident"].get("tok_per_s")
    out: dict = {"profile": prof, "interleaved": sc.lockstep}
    if res:
        out["p4_like_shipped"] = prof["prop-capped"].get("tok_per_s", 0) / res
        out["p4_like_overlap"] = prof["prop-capped-overlap"].get("tok_per_s", 0) / res
    slots = ((sides[0].result.get("load") or {}).get("plan") or {}).get("slots_per_layer") or sc.miss_slots
    n = p5_tokens or max(8, sc.p5_prompt // 2)
    for variant in (None, "overlap"):
        load = ctx.streamed(slots=slots, page_cache="drop", variant=variant)
        r = _split_pair(ctx, load, ctx.prompt(n, seed=5), (f"prop-p5-{variant}-b", f"prop-p5-{variant}-s"))
        out[f"p5_like_{variant or 'shipped'}"] = r["ratio"]
        out[f"p5_{variant or 'shipped'}"] = {k: r[k] for k in ("tokens", "batched_seconds", "single_seconds")}
    return out

"""P1 (streamed with every expert resident vs mlx-lm), P4 (model 3x the memory cap vs its
bottleneck bound) and P8 (mlx-lm under that cap): decode tok/s, side by side.

Why the bound for P4 uses the run's own reads: `raw GB/s` is a plain parallel pread of the
very extents the capped run missed (same batches, same threads, cold), so the bound is what
this disk could have delivered for that access pattern, measured minutes apart, not quoted.
"""

from __future__ import annotations

import numpy as np

from bench.harness.context import Ctx
from bench.harness.rawio import raw_batches
from bench.harness.sides import Side, run_sides
from bench.harness.targets import verdict


def _decode(side: Side) -> dict:
    return side.result.get("decode") or {}


def paired_median(reference: Side, side: Side) -> float | None:
    """Median over interleaved token pairs of reference time / side time.

    A robustness check beside the tok/s ratio: another tenant's burst slows one token of
    one side; the median pair is what both cost on the same machine state.
    """
    a = _decode(reference).get("seconds") or []
    b = _decode(side).get("seconds") or []
    n = min(len(a), len(b))
    return float(np.median(np.array(a[:n]) / np.array(b[:n]))) if n else None


def profile(side: Side) -> dict:
    """Seconds per token: total, router sync (compute waited for), expert reads, the rest."""
    d = _decode(side)
    n = d.get("tokens", 0)
    if not n:
        return {}
    total = sum(d["seconds"]) / n
    sync = d.get("sync_seconds", 0.0) / n
    wait = d.get("stats", {}).get("wait_seconds", 0.0) / n
    return {"tok_per_s": d["tok_per_s"], "s_per_token": total, "router_sync": sync,
            "expert_reads": wait, "rest": total - sync - wait,
            "hit_rate": d.get("stats", {}).get("hit_rate"),
            "missed_mb_per_token": d.get("stats", {}).get("bytes_read", 0) / n / 1e6}  # fmt: skip


def p1(ctx: Ctx) -> tuple[dict, dict]:
    sc = ctx.scale
    sides = [Side("p1-resident", ctx.resident()),
             Side("p1-streamed", ctx.streamed(slots=sc.experts, preload_all=True))]  # fmt: skip
    run_sides(sides, prompt=ctx.prompt(), warmup=sc.warmup, tokens=sc.tokens, logs=ctx.logs,
              interleave=sc.lockstep)  # fmt: skip
    res, st = (_decode(s).get("tok_per_s") for s in sides)
    value = st / res if res and st else None
    details = {"resident_tok_s": res, "streamed_tok_s": st, "interleaved": sc.lockstep,
               "paired_median_ratio": paired_median(sides[0], sides[1]),
               "profile": {s.name: profile(s) for s in sides},
               "sides": {s.name: _summary(s) for s in sides}}  # fmt: skip
    return verdict("P1", value), details


def p4_p8(ctx: Ctx) -> tuple[dict, dict, dict]:
    """Capped streamed run (defaults), resident reference, and mlx-lm under the same cap."""
    sc, cap = ctx.scale, ctx.cap
    sides = [Side("p4-capped", ctx.streamed(cap=cap, record=True), cap=cap),
             Side("p4-resident", ctx.resident()),
             Side("p8-mlx-lm-capped", ctx.resident(), cap=cap)]  # fmt: skip
    run_sides(sides, prompt=ctx.prompt(), warmup=sc.warmup, tokens=sc.tokens, logs=ctx.logs,
              interleave=sc.lockstep, before=ctx.cold)  # fmt: skip
    capped, resident, mlxlm = sides
    d = _decode(capped)
    batches = d.pop("batches", [])
    raw = raw_batches(batches, ctx.io_threads) if batches else None
    tps, res_tps = d.get("tok_per_s"), _decode(resident).get("tok_per_s")
    missed_gb = d.get("stats", {}).get("bytes_read", 0) / max(1, d.get("tokens", 0)) / 1e9
    io_bound = raw["gb_per_s"] / missed_gb if raw and missed_gb else float("inf")
    bound = min(res_tps, io_bound) if res_tps else None
    p4_value = tps / bound if tps and bound else None
    details = {"cap_bytes": cap, "store_bytes": ctx.store_bytes, "capped_tok_s": tps,
               "resident_tok_s": res_tps, "missed_gb_per_token": missed_gb,
               "paired_median_vs_resident": paired_median(resident, capped) if sc.lockstep else None,
               "raw_gb_s_same_extents": raw and raw["gb_per_s"], "io_bound_tok_s": io_bound,
               "bound_tok_s": bound, "bound_is": "compute (resident)" if bound == res_tps else "disk",
               "disk_read_gb_per_token": d.get("io_read_bytes", 0) / max(1, d.get("tokens", 0)) / 1e9,
               "plan": (capped.result.get("load") or {}).get("plan"),
               "profile": {s.name: profile(s) for s in (capped, resident)},
               "sides": {s.name: _summary(s) for s in sides}, "interleaved": sc.lockstep}  # fmt: skip
    if "died" in mlxlm.result:
        p8 = "OOM-killed" if mlxlm.result["died"].get("oom_killed") else "died"
        p8 += f" during {mlxlm.result['died']['op']}"
    else:
        p8 = _decode(mlxlm).get("tok_per_s")
    return verdict("P4", p4_value), details, verdict("P8", p8, f"cap {cap / 2**30:.2f} GiB")


def _summary(side: Side) -> dict:
    r = side.result
    d = dict(r.get("decode") or {})
    d.pop("batches", None)
    if "seconds" in d:
        d["seconds"] = [round(x, 4) for x in d["seconds"]]
    return {"load": r.get("load"), "prefill_seconds": (r.get("prefill") or {}).get("seconds"),
            "decode": d, "exit": r.get("exit"), "died": r.get("died")}  # fmt: skip

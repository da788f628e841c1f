"""P5: prompt tok/s of a long prompt streamed in one batch vs one token at a time.

Both sides stream under P4's bank size (the memory-capped plan) with page_cache="drop", so
neither profits from the other's page cache; the one-token side runs half before and half
after the batched side to spread background load over both. A resident mlx-lm pair (short
prompt, batched vs one at a time) says what the backend's kernels gain from batching at
all: on the CPU backend quantized matmuls cost the same per row at any batch size.
"""

from __future__ import annotations

from bench.harness.context import Ctx
from bench.harness.driver import Worker, WorkerDied
from bench.harness.targets import verdict


def _split_pair(ctx: Ctx, load: dict, tokens: list[int], names: tuple[str, str],
                shared: bool = False) -> dict:  # fmt: skip
    """Seconds of `tokens` in one batch and one at a time (the latter split around the former).

    shared: one worker holds both KV caches (a resident model twice would not fit in memory
    at full scale; with nothing streamed, sharing a process changes nothing else).
    """
    half = len(tokens) // 2
    workers = [Worker(names[0], ctx.logs)] + ([] if shared else [Worker(names[1], ctx.logs)])
    a, b = workers[0], workers[-1]
    try:
        loads = [w.call("load", **load) for w in workers]
        ctx.cold()
        s1 = b.call("prefill", tokens=tokens[:half], chunk=1, cache="single")
        t = a.call("prefill", tokens=tokens, chunk=len(tokens), cache="batched")
        s2 = b.call("prefill", tokens=tokens[half:], chunk=1, cache="single", fresh=False)
    finally:
        exits = [w.close() for w in workers]
    single_s = s1["seconds"] + s2["seconds"]
    stats = [x.get("stats") for x in (t, s1, s2)]
    return {"tokens": len(tokens), "batched_seconds": t["seconds"], "single_seconds": single_s,
            "batched_tok_s": len(tokens) / t["seconds"], "single_tok_s": len(tokens) / single_s,
            "ratio": single_s / t["seconds"], "stats_batched": stats[0],
            "stats_single": stats[1:], "loads": loads, "exits": exits}  # fmt: skip


def p5(ctx: Ctx, slots: int | None) -> tuple[dict, dict]:
    sc = ctx.scale
    load = ctx.streamed(slots=slots or sc.miss_slots, page_cache="drop")
    details: dict = {"slots_per_layer": slots or sc.miss_slots}
    try:
        streamed = _split_pair(ctx, load, ctx.prompt(sc.p5_prompt, seed=5), ("p5-batched", "p5-single"))
        details["streamed"] = streamed
        value = streamed["ratio"]
    except WorkerDied as e:
        details["died"] = e.info
        value = None
    try:
        res = _split_pair(ctx, ctx.resident(), ctx.prompt(sc.p5_resident_prompt, seed=6),
                          ("p5-resident", ""), shared=True)  # fmt: skip
        details["resident_backend_batching_gain"] = res["ratio"]
        details["resident"] = res
    except WorkerDied as e:
        details["resident_died"] = e.info
    note = f"{sc.p5_prompt}-token prompt" + ("" if sc.p5_prompt == 512 else " (reduced scale)")
    return verdict("P5", value, note), details

"""P2 (streamed expert read rate vs raw pread of the same extents) and P3 (disk bytes vs
missed expert bytes), from one miss-heavy decode with every read cold.

How: the streamed side drops each expert's pages after reading it (page_cache="drop") and
the store's cache is dropped before each token, so every miss is a disk read; after each
token the driver replays that token's missed extents with plain parallel preads (same
batches, same threads, cold). Disk bytes come from the worker's /proc/self/io read_bytes
over its decode steps only, not from our own counters.
"""

from __future__ import annotations

from bench.harness.context import Ctx
from bench.harness.prepare import drop_tree_cache, files_under
from bench.harness.rawdisk import pread_extents, sequential_read
from bench.harness.rawio import raw_batch
from bench.harness.sides import Side, run_sides
from bench.harness.targets import verdict
from bench.stages.decode_targets import profile


def p2_p3(ctx: Ctx) -> tuple[dict, dict, dict, dict]:
    sc = ctx.scale
    raw = {"bytes": 0, "seconds": 0.0, "batches": 0}
    every: list = []

    def between(side: Side, reply: dict) -> None:
        for batch in reply.get("batches", []):
            b, s = raw_batch(batch, ctx.io_threads)
            raw["bytes"] += b
            raw["seconds"] += s
            raw["batches"] += 1
            every.extend(batch)
        drop_tree_cache(ctx.store)  # the next streamed token starts cold too

    side = Side("p2-miss-heavy", ctx.streamed(slots=sc.miss_slots, page_cache="drop",
                                              prefetch="none", record=True))  # fmt: skip
    run_sides([side], prompt=ctx.prompt(), warmup=sc.warmup, tokens=sc.tokens, logs=ctx.logs,
              between=between, before=ctx.cold)  # fmt: skip
    d = side.result.get("decode") or {}
    d.pop("batches", None)
    st = d.get("stats", {})
    stream_gbps = st["bytes_read"] / st["read_seconds"] / 1e9 if st.get("read_seconds") else None
    raw_gbps = raw["bytes"] / raw["seconds"] / 1e9 if raw["seconds"] else None
    drop_tree_cache(ctx.store)
    together = pread_extents([(str(p), o, n) for p, o, n in every], threads=ctx.io_threads,
                             drop_cache=True).as_dict() if every else None  # fmt: skip
    seq = sequential_read([str(p) for p in files_under(ctx.store)], drop_cache=True).as_dict()
    p2 = stream_gbps / raw_gbps if stream_gbps and raw_gbps else None
    disk, missed = d.get("io_read_bytes", 0), st.get("bytes_read", 0)
    p3 = disk / missed if missed else None
    details2 = {"streamed_gb_s": stream_gbps, "raw_same_batches_gb_s": raw_gbps,
                "raw": raw, "raw_all_at_once": together, "sequential_store_read": seq,
                "slots_per_layer": sc.miss_slots, "hit_rate": st.get("hit_rate"),
                "read_seconds": st.get("read_seconds"), "bytes_read": missed,
                "profile": profile(side), "load": side.result.get("load"),
                "exit": side.result.get("exit"), "died": side.result.get("died")}  # fmt: skip
    details3 = {"disk_read_bytes": disk, "missed_expert_bytes": missed,
                "prefetch_bytes": st.get("prefetch_bytes", 0),
                "how": "prefetch none, page_cache drop, store cache dropped before each token; "
                       "disk bytes = worker /proc/self/io read_bytes over decode steps"}  # fmt: skip
    return verdict("P2", p2), details2, verdict("P3", p3), details3

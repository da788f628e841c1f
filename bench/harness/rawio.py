"""Raw-disk replays of what the streamed path read: same extents, batches and threads.

Why batches: a streamed MoE layer reads the misses of one router call in parallel, then
must wait for them before computing; the fair raw reference keeps that structure (one
parallel pread of each call's extents, the same number of threads) and differs only in
having no MLX, no slot mapping and no Python bank around the reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.harness.rawdisk import drop_file_cache, pread_extents

Batch = Sequence[Sequence]  # [(path, offset, length), ...]


def raw_batch(batch: Batch, threads: int, cold: bool = True) -> tuple[int, float]:
    """(bytes, seconds) of one parallel pread of `batch`, its files' cache dropped first."""
    extents = [(str(p), int(o), int(n)) for p, o, n in batch]
    if cold:
        for path in {p for p, _, _ in extents}:
            drop_file_cache(path)
    r = pread_extents(extents, threads=max(1, min(threads, len(extents))))
    return r.bytes, r.seconds


def raw_batches(batches: Sequence[Batch], threads: int, cold: bool = True) -> dict:
    """Every batch in order, each cold: total bytes, seconds and GB/s."""
    nbytes, seconds = 0, 0.0
    for batch in batches:
        b, s = raw_batch(batch, threads, cold)
        nbytes += b
        seconds += s
    return {"bytes": nbytes, "seconds": seconds, "batches": len(batches),
            "gb_per_s": nbytes / seconds / 1e9 if seconds else 0.0}  # fmt: skip

"""Raw-disk reference with no MLX: parallel pread of extents, and sequential file reads.

Why: the disk of this VM (and any user's) is noisy, so every streaming figure must be
compared with what plain reads of the same bytes achieve in the same run. Cold reads
need the file's page cache dropped first (posix_fadvise DONTNEED, per file, no root).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import mmap
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

Extent = tuple[str, int, int]  # (path, offset, length)
MiB = 1 << 20


@dataclass
class ReadResult:
    bytes: int
    seconds: float
    reads: int
    threads: int
    queue_depth: int
    lat_mean_ms: float
    lat_p50_ms: float
    lat_p99_ms: float
    lat_max_ms: float

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        return {**asdict(self), "gb_per_s": self.gb_per_s}


def drop_file_cache(path: str | os.PathLike[str]) -> None:
    """Evict one file's clean pages from the page cache (dirty pages are written first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: str | os.PathLike[str]) -> float | None:
    """Fraction of a file's pages in the page cache (mmap + mincore), None if unsupported.

    Mapping without touching reads nothing, so the probe does not disturb the cache.
    """
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            if libc.mincore(addr, size, vec) != 0:
                return None
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) / pages


def _summary(lat: list[float], nbytes: int, seconds: float, threads: int, qd: int) -> ReadResult:
    lat_ms = sorted(x * 1e3 for x in lat) or [0.0]
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
    return ReadResult(
        bytes=nbytes, seconds=seconds, reads=len(lat), threads=threads, queue_depth=qd,
        lat_mean_ms=statistics.fmean(lat_ms), lat_p50_ms=statistics.median(lat_ms),
        lat_p99_ms=p99, lat_max_ms=lat_ms[-1],
    )


def _read_fully(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise EOFError(f"unexpected end of file at offset {offset + done}")
        done += n
    return done


def _run_workers(worker: Callable[[int], None], threads: int) -> float:
    """Run worker(0..threads-1) on threads; wall seconds, or the first worker's exception."""
    errors: list[BaseException] = []

    def guarded(w: int) -> None:
        try:
            worker(w)
        except BaseException as e:  # surfaced in the caller
            errors.append(e)

    pool = [threading.Thread(target=guarded, args=(w,)) for w in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds


def pread_extents(extents: Sequence[Extent], threads: int = 4, queue_depth: int | None = None,
                  chunk_bytes: int | None = None, drop_cache: bool = False) -> ReadResult:
    """Read every extent with ``threads`` workers and at most ``queue_depth`` reads in flight.

    Each extent is one pread (or several of ``chunk_bytes``), into per-thread buffers
    allocated before timing. Latency is per pread call.
    """
    if threads < 1:
        raise ValueError("threads must be >= 1")
    qd = threads if queue_depth is None else queue_depth
    if qd < 1:
        raise ValueError("queue_depth must be >= 1")
    paths = sorted({p for p, _, _ in extents})
    for p in paths:
        size = os.path.getsize(p)
        for _, off, n in (e for e in extents if e[0] == p):
            if off < 0 or n <= 0 or off + n > size:
                raise ValueError(f"extent ({p}, {off}, {n}) outside the file (size {size})")
    if drop_cache:
        for p in paths:
            drop_file_cache(p)
    reads = []
    for p, off, n in extents:
        step = chunk_bytes or n
        reads.extend((p, o, min(step, off + n - o)) for o in range(off, off + n, step))
    biggest = max((n for _, _, n in reads), default=0)
    fds = {p: os.open(p, os.O_RDONLY) for p in paths}
    gate = threading.BoundedSemaphore(qd)
    nxt = itertools.count()
    lat: list[list[float]] = [[] for _ in range(threads)]
    bufs = [bytearray(biggest) for _ in range(threads)]
    total = [0] * threads

    def worker(w: int) -> None:
        view = memoryview(bufs[w])
        while (i := next(nxt)) < len(reads):
            p, off, n = reads[i]
            with gate:
                t0 = time.perf_counter()
                total[w] += _read_fully(fds[p], view[:n], off)
                lat[w].append(time.perf_counter() - t0)

    try:
        seconds = _run_workers(worker, threads)
    finally:
        for fd in fds.values():
            os.close(fd)
    return _summary([x for w in lat for x in w], sum(total), seconds, threads, qd)


def sequential_read(paths: Sequence[str | os.PathLike[str]], block_bytes: int = MiB,
                    threads: int = 1, drop_cache: bool = False) -> ReadResult:
    """Read whole files front to back in ``block_bytes`` reads; ``threads`` files at once."""
    files = [os.fspath(p) for p in paths]
    if drop_cache:
        for p in files:
            drop_file_cache(p)
    nxt = itertools.count()
    lat: list[list[float]] = [[] for _ in range(threads)]
    total = [0] * threads

    def worker(w: int) -> None:
        buf = bytearray(block_bytes)
        while (i := next(nxt)) < len(files):
            with open(files[i], "rb", buffering=0) as f:
                while True:
                    t0 = time.perf_counter()
                    n = f.readinto(buf)
                    if not n:
                        break
                    lat[w].append(time.perf_counter() - t0)
                    total[w] += n

    seconds = _run_workers(worker, threads)
    return _summary([x for w in lat for x in w], sum(total), seconds, threads, threads)


def random_extents(paths: Sequence[str], length: int, count: int, align: int = 16384,
                   seed: int = 0) -> list[Extent]:
    """``count`` distinct aligned extents of ``length`` bytes spread over ``paths``."""
    rnd = random.Random(seed)
    slots = []
    for p in paths:
        size = os.path.getsize(p)
        stride = (length + align - 1) // align * align
        slots.extend((p, k * stride) for k in range(max(0, (size - length) // stride + 1)))
    if count > len(slots):
        raise ValueError(f"only {len(slots)} non-overlapping {length}-byte extents fit")
    return [(p, off, length) for p, off in rnd.sample(slots, count)]

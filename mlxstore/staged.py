"""File bytes into device memory through MLX's own loader, for GPUs that are not unified.

On CUDA an MLX array lives in device memory, and exposing it to the host (the buffer
protocol) moves it into managed memory for good: every later host write migrates pages
and the GPU's next read faults them back. `mx.load` of a file-like object instead reads
into a host buffer and copies it to the device on the GPU stream (one DMA), so a caller
can read an extent into a fresh device array and copy it into place with ordinary MLX
ops, ordered after every kernel already queued. The file-like object below serves an
`.npy` header for a flat uint8 array followed by the extent's bytes, read with `preadv`
from the store file straight into MLX's buffer.

MLX's copy from pageable memory blocks the caller, and the reads cannot start before MLX
has allocated the buffer they land in, so one load is read-then-copy with the disk idle
during the copy. Several loads in turn, with every later load's extents handed to the OS
to read ahead as soon as the first load's reads are queued, keep the disk busy while
MLX copies.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import mlx.core as mx

from mlxstore import osio


def _npy_header(length: int) -> bytes:
    """Header of a version-1 `.npy` file holding `length` uint8 values (64-byte padded)."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({length},), }}"
    pad = -(10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


class _ExtentsFile(io.RawIOBase):
    """A read-only file: an `.npy` header, then the bytes of each (fd, offset, length) in turn."""

    def __init__(self, extents: Sequence[tuple[int, int, int, str]], pool: Executor | None, threads: int,
                 min_part: int, after_queue: Callable[[], None] | None = None):  # fmt: skip
        super().__init__()
        self._after_queue = after_queue  # called once, when the first reads are on their way
        self._extents = list(extents)
        self._length = sum(e[2] for e in self._extents)
        self._header = _npy_header(self._length)
        self._pos = 0
        self._pool, self._threads, self._min_part = pool, threads, min_part
        self.error: BaseException | None = None
        self.file_seconds = 0.0  # wall time of the file reads, apart from MLX's copy

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        size = len(self._header) + self._length
        self._pos = {0: pos, 1: self._pos + pos, 2: size + pos}[whence]
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n, head = 0, len(self._header)
        if self._pos < head:  # MLX reads the header in small pieces first
            n = min(view.nbytes, head - self._pos)
            view[:n] = self._header[self._pos : self._pos + n]
        data = view[n:]
        if data.nbytes:
            start = self._pos + n - head
            data = data[: max(0, self._length - start)]
            try:
                self._read(data, start)
            except BaseException as exc:  # noqa: BLE001 - re-raised by read_to_device, not through MLX
                self.error = exc
                return 0
            n += data.nbytes
        self._pos += n
        return n

    def _read(self, data: memoryview, start: int) -> None:
        """Bytes [start, start + len(data)) of the concatenated extents, reads in parallel."""
        began = time.perf_counter()
        try:
            self._read_parts(data, start)
        finally:
            self.file_seconds += time.perf_counter() - began

    def _read_parts(self, data: memoryview, start: int) -> None:
        jobs, pos, end = [], 0, start + data.nbytes
        for fd, offset, length, what in self._extents:
            lo, hi = max(start, pos), min(end, pos + length)
            if lo < hi:
                for off, views in osio.split_reads(offset + lo - pos, [data[lo - start : hi - start]],
                                                   self._threads, self._min_part):  # fmt: skip
                    jobs.append((fd, off, views, what))
            pos += length
        if self._pool is None or (len(jobs) == 1 and self._after_queue is None):
            self._queued()
            for fd, offset, views, what in jobs:
                osio.read_extent_into(fd, offset, views, what)
            return
        futures = [self._pool.submit(osio.read_extent_into, fd, off, views, what) for fd, off, views, what in jobs]
        self._queued()
        for future in futures:
            future.result()

    def _queued(self) -> None:
        if self._after_queue is not None:
            self._after_queue, call = None, self._after_queue
            call()


def group_loads(lengths: Sequence[int], load_size: int) -> list[int]:
    """How many of the extents (in order) go in each load: whole extents, a load closed
    once it holds `load_size` bytes; 0 puts them all in one load."""
    counts, total = [], 0
    for length in lengths:
        if not counts or (load_size and total >= load_size):
            counts.append(0)
            total = 0
        counts[-1] += 1
        total += length
    return counts


def _read_ahead(extents: Sequence[tuple[int, int, int, str]]) -> None:
    for fd, offset, length, _ in extents:
        osio.advise_willneed(fd, offset, length)


def read_to_device(
    extents: Sequence[tuple[int, int, int, str]],
    pool: Executor | None,
    threads: int,
    min_part: int,
    load_size: int = 0,
) -> tuple[list[tuple[mx.array, int]], float]:
    """The bytes of each `(fd, offset, length, what)` extent on the device, as evaluated flat
    uint8 arrays, each with how many of the extents (in order) it holds concatenated, and
    the seconds the file reads took (the rest of the call is MLX's host-to-device copies).

    One `mx.load` (one host-to-device copy) per `group_loads(..., load_size)`; the reads
    run on `pool`, each split in up to `threads` parts of at least `min_part` bytes, and
    the extents of every load after the first are read ahead by the OS (on `pool`) from
    the moment the first load's reads are queued. A failed read raises its
    `StoreError`, which names `what`.
    """
    counts = group_loads([x[2] for x in extents], load_size)
    ahead = list(extents[counts[0]:]) if extents else []
    kick = (lambda: pool.submit(_read_ahead, ahead)) if ahead and pool is not None else None
    loads, seconds, start = [], 0.0, 0
    for i, n in enumerate(counts):
        f = _ExtentsFile(extents[start : start + n], pool, threads, min_part, kick if i == 0 else None)
        try:
            loads.append((mx.load(f, format="npy"), n))
        except RuntimeError:
            if f.error is not None:
                raise f.error from None
            raise
        finally:
            seconds += f.file_seconds
        start += n
    return loads, seconds

"""File bytes into device memory through MLX's own loader, for GPUs that are not unified.

On CUDA an MLX array lives in device memory, and exposing it to the host (the buffer
protocol) moves it into managed memory for good: every later host write migrates pages
and the GPU's next read faults them back. `mx.load` of a file-like object instead reads
into a host buffer and copies it to the device on the GPU stream (one DMA), so a caller
can read an extent into a fresh device array and copy it into place with ordinary MLX
ops, ordered after every kernel already queued. The file-like object below serves an
`.npy` header for a flat uint8 array followed by the extent's bytes, read with `preadv`
from the store file straight into MLX's buffer.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
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
                 min_part: int):  # fmt: skip
        super().__init__()
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
        if self._pool is None or len(jobs) == 1:
            for fd, offset, views, what in jobs:
                osio.read_extent_into(fd, offset, views, what)
            return
        futures = [self._pool.submit(osio.read_extent_into, fd, off, views, what) for fd, off, views, what in jobs]
        for future in futures:
            future.result()


def read_to_device(
    extents: Sequence[tuple[int, int, int, str]],
    pool: Executor | None,
    threads: int,
    min_part: int,
) -> tuple[mx.array, float]:
    """The bytes of each `(fd, offset, length, what)` extent, concatenated, as an evaluated
    flat uint8 array on the device, and the seconds its file reads took (the rest of the
    call is MLX's host-to-device copy).

    One `mx.load` (one host-to-device copy, one wait) for all of them; the reads run on
    `pool`, each split in up to `threads` parts of at least `min_part` bytes. A failed
    read raises its `StoreError`, which names `what`.
    """
    f = _ExtentsFile(extents, pool, threads, min_part)
    try:
        return mx.load(f, format="npy"), f.file_seconds
    except RuntimeError:
        if f.error is not None:
            raise f.error from None
        raise

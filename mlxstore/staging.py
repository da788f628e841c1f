"""Host buffers that file bytes are read into and copied from, for GPUs with memory of their own.

On CUDA an MLX array lives in device memory, and exposing it to the host moves it into
managed memory for good, where each host write migrates pages and the GPU's next read
faults them back; so arrays the GPU reads at every call (expert slots) never get a host
view. Instead a model keeps two staging buffers: MLX arrays the host does see, advised to
stay in host memory and mapped for the GPU (`mlxstore.cudamem`). Reads land there at memory
speed and MLX ops copy the bytes on into place on the GPU stream, ordered after every kernel
already queued; while the GPU copies from one buffer, the disk fills the other.

A buffer is written again only after every copy that read it has run (`take` waits for
them), so the host never overwrites bytes a queued copy has yet to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

import mlx.core as mx

from . import cudamem
from .buffers import alloc_bytes

BUFFERS = 2  # one the disk fills while the GPU copies from the other


def buffer_bytes(load_size: int, largest: int, slots: int | None = None) -> int:
    """Bytes of one staging buffer: `load_size`, but no more than one call of a layer reads
    at once (`slots` of the largest extent: a call never fills more slots than its layer
    has), and at least the largest extent."""
    cap = load_size if slots is None else min(load_size, slots * largest)
    return max(cap, largest)


def staging_bytes(load_size: int, largest: int, slots: int | None = None) -> int:
    """Memory a `HostStaging` of these sizes holds for as long as it lives."""
    return BUFFERS * buffer_bytes(load_size, largest, slots)


def pack_loads(lengths: Sequence[int], capacity: int) -> list[int]:
    """How many of the extents (in order) go in each load: whole extents, as many as fit in
    `capacity` bytes (an extent larger than that is refused)."""
    counts, total = [], 0
    for length in lengths:
        if length > capacity:
            raise ValueError(f"an extent of {length} bytes does not fit a staging buffer of {capacity}")
        if not counts or total + length > capacity:
            counts.append(0)
            total = 0
        counts[-1] += 1
        total += length
    return counts


class StagingBuffer:
    """One host buffer: a flat uint8 MLX array, its host view, the arrays whose queued
    copies read it, and the reads still landing in it (futures of the caller's pool)."""

    def __init__(self, nbytes: int):
        self.array, self.view = alloc_bytes(nbytes)
        self.advised = cudamem.prefer_host(self.view)
        self.readers: list[mx.array] = []
        self.writes: list[Future] = []

    def wait(self) -> None:
        """Return once every read into this buffer has ended (failed ones too: their bytes
        are never used) and every copy that reads it has run."""
        for future in self.writes:
            future.exception()
        self.writes = []
        if self.readers:
            mx.eval(self.readers)
            self.readers = []


class HostStaging:
    """A model's staging buffers, taken in turn (calls into one model run one at a time)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buffers = [StagingBuffer(capacity) for _ in range(BUFFERS)]
        self._next = 0

    @property
    def nbytes(self) -> int:
        return self.capacity * len(self.buffers)

    @property
    def advised(self) -> bool:
        """Whether CUDA was told to keep the buffers in host memory (see `mlxstore.cudamem`)."""
        return all(b.advised for b in self.buffers)

    def take(self) -> StagingBuffer:
        """The next buffer, once the copies that read it last have run."""
        buf = self.buffers[self._next]
        self._next = (self._next + 1) % len(self.buffers)
        buf.wait()
        return buf

    def take_idle(self) -> StagingBuffer | None:
        """The next buffer if no read into it is still running (as `take` otherwise), else
        None: for reads that may be skipped rather than waited for (read-ahead)."""
        if not all(f.done() for f in self.buffers[self._next].writes):
            return None
        return self.take()

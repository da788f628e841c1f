"""An open store: metadata, embedded files, and tensors materialized as `mx.array`.

How a tensor becomes an array (see buffers.py):

- zero-copy (`Store.zero_copy` True: Metal only): a raw dense tensor is a wrap of its
  mapped file pages; nothing is read until MLX touches it. The file must then stay intact
  while the array lives (as with every mmap loader, truncating it can SIGBUS).
- otherwise (always on the CPU backend; expert-stacked and zstd tensors everywhere): the
  bytes are read with `preadv` straight into MLX-owned memory. One copy, and a file that
  shrank after open raises StoreError instead of crashing.

Why read rather than copy out of the mapping on the CPU backend: a mapped file that shrinks
kills the process with SIGBUS mid-copy, while a read just comes back short. The read
costs a little more than mmap + copy, most when the page cache is cold, because MLX has
no uninitialized allocation (the zero fill runs before the read instead of overlapping
it). Faulting whole tensors through a MADV_RANDOM mapping is far slower still: never do
that.

A returned array never depends on the store staying open: a read array owns its memory,
and a wrapped array keeps its mapping alive by reference (`close` unmaps only mappings no
array uses).
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np
import zstandard

from mlxstore.formats import (
    ChecksumError,
    ExpertGroup,
    Index,
    Piece,
    StoreError,
    StoreReader,
    Tensor,
)
from mlxstore.formats.layout import xxh3
from mlxstore.formats.reader import check_zstd_frame

from . import buffers, osio


class Store:
    """A validated, open store. Thread-safe for reads; close it (or use `with`) when done."""

    def __init__(self, path: str | os.PathLike, *, zero_copy: bool | None = None):
        self._reader = StoreReader(path)
        self.path: Path = self._reader.primary
        self._maps: dict[int, mmap.mmap] = {}
        self._lock = threading.Lock()
        self._closed = False
        wrap = buffers.can_wrap()
        if zero_copy and not wrap:
            self._reader.close()
            raise StoreError(
                "zero_copy=True: this MLX backend cannot wrap memory without a copy (CPU)"
            )
        self.zero_copy: bool = wrap if zero_copy is None else zero_copy

    # ------------------------------------------------------------ metadata

    @property
    def index(self) -> Index:
        return self._reader.index

    @property
    def config(self) -> dict | None:
        return self.index.config

    @property
    def metadata(self) -> dict[str, str]:
        return self.index.metadata

    @property
    def quantization(self) -> dict[str, dict] | None:
        return self.index.quantization

    @property
    def files(self) -> list[str]:
        """Names of the embedded files (tokenizer, templates...)."""
        return list(self.index.files)

    @property
    def tensor_names(self) -> list[str]:
        return list(self.index.tensors)

    @property
    def expert_groups(self) -> dict[str, ExpertGroup]:
        return self.index.expert_groups

    def tensor(self, name: str) -> Tensor:
        """The index entry of a tensor (dtype, shape, pieces); KeyError if absent."""
        try:
            return self.index.tensors[name]
        except KeyError:
            raise KeyError(f"store has no tensor {name!r}") from None

    def read_file(self, name: str, check: bool = True) -> bytes:
        self._check_open()
        return self._reader.read_file(name, check)

    # ------------------------------------------------------------ files and mappings

    def fd(self, shard: int) -> int:
        """The read-only descriptor of a shard file (for pread-based readers such as moe/)."""
        self._check_open()
        return self._reader.fds[shard]

    def mapping(self, shard: int) -> mmap.mmap:
        """The mapping of a whole shard file, made on first use.

        Normally shared, read-only and MADV_RANDOM: a fault reads its page, not megabytes
        of readahead (RESEARCH.md). When zero-copy it is private copy-on-write, because MLX
        may write into a buffer it owns (donation) and must never write into the file, and
        keeps normal readahead: wrapped tensors are faulted in whole, and faulting a large
        tensor page by page through a MADV_RANDOM mapping is many times slower than readahead.
        """
        with self._lock:
            self._check_open()
            mm = self._maps.get(shard)
            if mm is None:
                access = mmap.ACCESS_COPY if self.zero_copy else mmap.ACCESS_READ
                mm = mmap.mmap(self._reader.fds[shard], 0, access=access)
                if not self.zero_copy:
                    osio.madvise(mm, 0, len(mm), "random")
                self._maps[shard] = mm
            return mm

    @property
    def bytes_mapped(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._maps.values())

    def advise(self, name: str, advice: osio.Advice) -> None:
        """Hint the kernel about a tensor's bytes ("willneed" before use, "dontneed" after)."""
        tensor = self.tensor(name)
        if self._closed:
            return
        for p in tensor.pieces:
            if advice == "willneed":
                osio.advise_willneed(self._reader.fds[p.shard], p.offset, p.length)
            elif advice == "dontneed":
                osio.advise_dontneed(self._reader.fds[p.shard], p.offset, p.length)
            mm = self._maps.get(p.shard)
            if mm is not None and not (advice == "dontneed" and self.zero_copy):
                osio.madvise(mm, p.offset, p.length, advice)

    # ------------------------------------------------------------ tensors

    def array(self, name: str, check: bool = False) -> mx.array:
        """Materialize one tensor as an evaluated `mx.array` (see the module docstring)."""
        return self.materialize(name, check)[0]

    def arrays(self, names: Iterable[str], check: bool = False, threads: int = 1) -> list[mx.array]:
        """Materialize many tensors, their reads on `threads` threads.

        Only the reads leave the calling thread: MLX streams belong to the thread that
        made them (MLX >= 0.31.2), so an array allocated or evaluated on a pool thread
        would be made on a stream that ends with that thread. Allocation and finishing
        stay here, and at most 2 x `threads` tensors are between the two at once.
        """
        threads = max(1, threads)
        out: list[mx.array] = []
        with ThreadPoolExecutor(max_workers=threads) as pool:  # leaving it waits for every read
            started: deque[tuple[PendingTensor, Future]] = deque()
            for name in names:
                if len(started) >= 2 * threads:  # bounds the host buffers in flight (CUDA)
                    out.append(_finish_first(started))
                pending = self.begin(name, check)
                started.append((pending, pool.submit(pending.fill)))
            while started:
                out.append(_finish_first(started))
        return out

    def materialize(self, name: str, check: bool = False) -> tuple[mx.array, int]:
        """The tensor as an array, and how many bytes were read from the files for it.

        `check` verifies each piece's xxh3 and raises ChecksumError naming the tensor (and
        expert) on mismatch.
        """
        pending = self.begin(name, check)
        pending.fill()
        return pending.finish()

    def begin(self, name: str, check: bool = False) -> PendingTensor:
        """A tensor's memory, allocated (or its mapping wrapped) on this thread; its
        `fill` moves bytes only and may run on any thread, `finish` runs here again."""
        self._check_open()
        t = self.tensor(name)
        if t.nbytes == 0:
            return PendingTensor(t, buffers.empty_tensor(t.dtype, t.shape))
        if t.encoding == "zstd":
            p = t.pieces[0]
            data = self._reader.read_piece(p, _piece_name(t, 0), check)
            check_zstd_frame(data, t)  # before allocating what the index claims
            raw, view = buffers.read_buffer(t.nbytes, (t.dtype, t.shape))
            return PendingTensor(t, raw, lambda: _decompress_into(data, view, t), t.stored_bytes)
        if self.zero_copy and t.expert_group is None:
            arr = self._wrap(t, check)
            if arr is not None:
                return PendingTensor(t, arr)
        raw, view = buffers.read_buffer(t.nbytes, (t.dtype, t.shape))
        return PendingTensor(t, raw, lambda: self._read_pieces(t, view, check), t.stored_bytes)

    def _read_pieces(self, t: Tensor, view: memoryview, check: bool) -> None:
        pos = 0
        for i, p in enumerate(t.pieces):
            part = view[pos : pos + p.length]
            osio.read_extent_into(self._reader.fds[p.shard], p.offset, [part], _piece_name(t, i))
            if check:
                _verify(part, p, _piece_name(t, i))
            pos += p.length

    def group_arrays(self, prefix: str, check: bool = False) -> dict[str, mx.array]:
        """Every tensor of an expert group, reading each expert's extent with one preadv."""
        self._check_open()
        group = self.expert_groups.get(prefix)
        if group is None:
            raise KeyError(f"store has no expert group {prefix!r}")
        tensors = [self.tensor(n) for n in group.tensors]
        bufs = [buffers.read_buffer(t.nbytes, (t.dtype, t.shape)) for t in tensors]
        per = [t.nbytes // max(group.num_experts, 1) for t in tensors]
        for e, ext in enumerate(group.extents):
            scatter, cursor, parts = [], ext.offset, []
            for t, (_, view), size in zip(tensors, bufs, per):
                p = t.pieces[e]
                if p.offset > cursor:
                    scatter.append(bytearray(p.offset - cursor))  # padding between parts
                part = view[e * size : (e + 1) * size]
                scatter.append(part)
                parts.append((part, p, _piece_name(t, e)))
                cursor = p.offset + p.length
            what = f"expert group {prefix!r} expert {e}"
            osio.read_extent_into(self._reader.fds[ext.shard], ext.offset, scatter, what)
            if check:
                for part, p, what in parts:
                    _verify(part, p, what)
        return {
            t.name: buffers.as_tensor(raw, t.dtype, t.shape) for t, (raw, _) in zip(tensors, bufs)
        }

    def _wrap(self, t: Tensor, check: bool) -> mx.array | None:
        p = t.pieces[0]
        mm = self.mapping(p.shard)
        osio.madvise(mm, p.offset, p.length, "willneed")  # start reading before MLX faults
        if check:  # a numpy view, released on return, so the mapping can still be closed
            _verify(np.frombuffer(mm, np.uint8, p.length, p.offset), p, _piece_name(t, 0))
        return buffers.wrap_mapped(mm, p.offset, p.length, t.dtype, t.shape)

    # ------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")

    def close(self) -> None:
        """Close files and unmap. Mappings still used by zero-copy arrays stay mapped
        until those arrays are freed; arrays that were read own their memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for mm in self._maps.values():
                try:
                    mm.close()
                except BufferError:
                    pass  # exported to live arrays: unmapped when the last one goes
            self._maps.clear()
        self._reader.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.index.tensors)} tensors"
        return f"<mlxstore.Store {str(self.path)!r} {state} zero_copy={self.zero_copy}>"


def open(path: str | os.PathLike, *, zero_copy: bool | None = None) -> Store:
    """Open a store (its directory or primary file) and validate its index.

    zero_copy: None (default) wraps mapped pages where MLX can (Metal) and reads elsewhere;
    False always reads (safe against files changing under us); True requires wrapping.
    """
    return Store(path, zero_copy=zero_copy)


class PendingTensor:
    """A tensor between `Store.begin` and `finish` (both on the thread that uses it)."""

    def __init__(self, tensor: Tensor, array: mx.array | np.ndarray, read: Callable[[], None] | None = None,
                 reads: int = 0):  # fmt: skip
        self.tensor = tensor
        self._array = array  # the tensor itself, or (with `read`) the bytes `as_tensor` makes it of
        self._read = read
        self.reads = reads  # bytes read from the files for it

    def fill(self) -> None:
        """The reads (bytes only, no MLX call): safe on any thread."""
        if self._read is not None:
            self._read()

    def finish(self, filled: Future | None = None) -> tuple[mx.array, int]:
        """The array, once `fill` has run (`filled`: its future, whose error is raised)."""
        if filled is not None:
            filled.result()
        t = self.tensor
        if self._read is None:
            return self._array, self.reads
        return buffers.as_tensor(self._array, t.dtype, t.shape), self.reads


def _finish_first(started: deque[tuple[PendingTensor, Future]]) -> mx.array:
    pending, future = started.popleft()
    return pending.finish(future)[0]


def _decompress_into(data: bytes, view: memoryview, t: Tensor) -> None:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data)
        done = 0
        while done < t.nbytes:
            n = reader.readinto(view[done:])
            if n == 0:
                break
            done += n
        extra = reader.read(1)
    except zstandard.ZstdError as e:
        raise StoreError(f"tensor {t.name!r}: cannot decompress: {e}") from None
    if done != t.nbytes or extra:
        size = f"more than {t.nbytes}" if extra else str(done)
        raise StoreError(f"tensor {t.name!r}: decompressed to {size} bytes, expected {t.nbytes}")


def _piece_name(t: Tensor, i: int) -> str:
    if t.expert_group is not None:
        return f"tensor {t.name!r} expert {i}"
    return f"tensor {t.name!r}"


def _verify(data, piece: Piece, what: str) -> None:
    if xxh3(data) != piece.xxh3:
        raise ChecksumError(f"{what}: checksum mismatch (data damaged on disk)", [what])

"""Host memory for tensors: MLX-owned buffers we read into, and zero-copy wraps of mappings.

Two ways bytes on disk become an `mx.array`:

- read: allocate MLX memory, expose it as a writable memoryview (the buffer protocol of an
  evaluated array is a view of its data on the CPU backend and on Apple's unified memory),
  `preadv` straight into it, then reinterpret the bytes as the tensor's dtype and shape
  (`view` and `reshape` share the buffer). One copy (kernel to MLX memory), no mapping
  touched, so a file that shrinks under us gives an error and never SIGBUS. Where memory
  is not unified (CUDA) the host view would move the array into managed memory for good,
  so there the bytes land in host memory and MLX copies them to the device once
  (`read_buffer`, `as_tensor`), as `mx.load` does.
- wrap: hand MLX a view of mapped file pages with `mx.asarray(..., copy=False)`. Only
  Metal can adopt foreign memory (page-aligned pointer); the CPU backend raises, and then
  callers read instead. A wrapped array keeps its numpy view, hence the mapping, alive.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from . import osio

MX_DTYPES: dict[str, mx.Dtype] = {
    "bool": mx.bool_, "uint8": mx.uint8, "uint16": mx.uint16, "uint32": mx.uint32,
    "uint64": mx.uint64, "int8": mx.int8, "int16": mx.int16, "int32": mx.int32,
    "int64": mx.int64, "float16": mx.float16, "bfloat16": mx.bfloat16,
    "float32": mx.float32, "float64": mx.float64, "complex64": mx.complex64,
}  # fmt: skip

_WRAP_ERRORS = (ValueError, TypeError, BufferError, RuntimeError)


def alloc_bytes(nbytes: int, like: tuple[str, Sequence[int]] | None = None) -> tuple[mx.array, memoryview]:
    """An evaluated uint8 MLX array of `nbytes` and a writable byte view of its memory.

    MLX dimensions are 32-bit: 2 GiB or more is allocated as `like`'s shape times its item
    size (a tensor's own dimensions each fit), and `as_tensor` reshapes it all the same.
    """
    buf = mx.zeros(_dims(nbytes, like), dtype=mx.uint8)
    mx.eval(buf)
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous or view.nbytes != nbytes:
        raise RuntimeError(
            "this MLX version does not expose array memory as a writable contiguous buffer"
        )
    return buf, view if view.ndim == 1 else view.cast("B")


def _dims(nbytes: int, like: tuple[str, Sequence[int]] | None) -> tuple[int, ...]:
    """A byte buffer's MLX shape: 1-D, or `like`'s shape times its item size from 2 GiB on."""
    if nbytes >= 1 << 31 and like is not None:
        _, shape = like
        return (*shape, nbytes // max(1, math.prod(shape)))
    return (nbytes,)


def unified_memory() -> bool:
    """Whether MLX arrays live in memory the host reads and writes in place (the CPU
    backend, Apple GPUs), rather than in a GPU's own memory (CUDA)."""
    return mx.default_device() != mx.gpu or mx.metal.is_available()


def read_buffer(nbytes: int, like: tuple[str, Sequence[int]] | None = None) -> tuple[mx.array | np.ndarray, memoryview]:
    """Memory to read a tensor's bytes into, and its writable byte view: MLX memory where
    memory is unified (`alloc_bytes`), else a host numpy buffer that `as_tensor` copies to
    the device."""
    if unified_memory():
        return alloc_bytes(nbytes, like)
    host = np.empty(nbytes, dtype=np.uint8)
    return host, memoryview(host)


def _stream(dtype: str):
    """Where a tensor of `dtype` is made: MLX's GPU backends have no float64, so those
    tensors are viewed and created on the CPU stream (their data is the same memory)."""
    return mx.cpu if dtype == "float64" else mx.default_stream(mx.default_device())


def as_tensor(raw: mx.array | np.ndarray, dtype: str, shape: Sequence[int]) -> mx.array:
    """Reinterpret flat uint8 bytes as `dtype` with `shape`, sharing memory (a host buffer
    from `read_buffer` is copied into MLX memory first); evaluated."""
    with mx.stream(_stream(dtype)):
        if isinstance(raw, np.ndarray):
            raw = mx.array(raw.reshape(_dims(raw.nbytes, (dtype, shape))))
        out = raw.view(MX_DTYPES[dtype]).reshape(tuple(shape))
        mx.eval(out)
    return out


def empty_tensor(dtype: str, shape: Sequence[int]) -> mx.array:
    with mx.stream(_stream(dtype)):
        out = mx.zeros(tuple(shape), dtype=MX_DTYPES[dtype])
        mx.eval(out)
    return out


def can_wrap() -> bool:
    """Whether this MLX backend adopts host memory without a copy (Metal yes, CPU no)."""
    probe = mmap.mmap(-1, osio.page_size())
    try:
        mx.asarray(np.frombuffer(probe, np.uint8), copy=False)
    except _WRAP_ERRORS:
        return False
    return True


def wrap_mapped(
    mm: mmap.mmap, offset: int, nbytes: int, dtype: str, shape: Sequence[int]
) -> mx.array | None:
    """Bytes of a mapping as an `mx.array` without a copy, or None if MLX cannot adopt them.

    Metal adopts only page-aligned memory, so the wrapped span is rounded up to whole pages
    when the mapping has them (as llama.cpp does) and the tensor is a slice of it.
    """
    page = osio.page_size()
    span = -(-nbytes // page) * page
    for length in dict.fromkeys((span, nbytes)):
        if offset + length > len(mm):
            continue
        try:
            raw = mx.asarray(np.frombuffer(mm, np.uint8, length, offset), copy=False)
        except _WRAP_ERRORS:
            continue
        return as_tensor(raw[:nbytes] if length != nbytes else raw, dtype, shape)
    return None

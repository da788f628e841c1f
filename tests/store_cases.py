"""Small stores written with StoreWriter for the reading-side tests (no mlx-lm models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxstore.formats import StoreWriter

NP_DTYPES = {
    "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "int8": np.int8, "int16": np.int16, "int32": np.int32,
    "int64": np.int64, "float16": np.float16, "bfloat16": np.uint16,  # bf16 as raw bits
    "float32": np.float32, "float64": np.float64, "complex64": np.complex64,
}  # fmt: skip

SHAPES = [(), (0,), (1,), (3, 0, 2), (7, 5), (2, 3, 4, 5), (1, 1, 1)]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random values covering each dtype's range (bfloat16: raw bit patterns, NaNs included)."""
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(NP_DTYPES[dtype])
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dtype == "complex64":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    if np_dtype.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(np_dtype)
    info = np.iinfo(np_dtype)  # uint16 also serves bfloat16: every bit pattern
    return rng.integers(info.min, info.max, shape, dtype=np_dtype, endpoint=True)


def write_store(
    path: Path,
    tensors: dict[str, tuple[str, np.ndarray]] | None = None,
    *,
    groups: dict[str, list[tuple[str, str, np.ndarray]]] | None = None,
    compress: set[str] = frozenset(),
    files: dict[str, bytes] | None = None,
    **writer_options,
) -> Path:
    """Write `tensors` {name: (dtype, array)} and expert `groups` {prefix: [(name, dtype, [E,...])]}."""
    with StoreWriter(path, **writer_options) as w:
        for name, (dtype, arr) in (tensors or {}).items():
            w.add_tensor(name, dtype, arr.shape, np.ascontiguousarray(arr), compress=name in compress)
        for prefix, members in (groups or {}).items():
            num = members[0][2].shape[0]
            w.add_expert_group(
                prefix,
                [(n, d, a.shape) for n, d, a in members],
                ([np.ascontiguousarray(a[e]) for _, _, a in members] for e in range(num)),
            )
        for name, data in (files or {}).items():
            w.add_file(name, data)
        w.index.config = {"model_type": "test"}
        w.index.metadata = {"origin": "tests"}
        return w.finish()


def raw_bytes(arr) -> bytes:
    """Bytes of a numpy array or an mx.array (bfloat16 through its uint16 bits)."""
    import mlx.core as mx

    if isinstance(arr, mx.array):
        if arr.dtype == mx.bfloat16:
            arr = arr.view(mx.uint16)
        return np.asarray(arr).tobytes()
    return np.ascontiguousarray(arr).tobytes()

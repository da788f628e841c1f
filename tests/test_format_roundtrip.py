"""Every dtype and odd shape survives StoreWriter -> StoreReader byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from mlxstore.formats import DTYPE_SIZES, StoreReader, StoreWriter

# numpy stand-ins: bfloat16 travels as its uint16 bits.
NUMPY = {
    "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "int8": np.int8, "int16": np.int16, "int32": np.int32,
    "int64": np.int64, "float16": np.float16, "bfloat16": np.uint16, "float32": np.float32,
    "float64": np.float64, "complex64": np.complex64,
}  # fmt: skip
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 7), (1, 1, 1, 1, 13)]


def _data(dtype: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype == "complex64":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    raw = rng.integers(0, 256, size=(int(np.prod(shape)) * DTYPE_SIZES[dtype],), dtype=np.uint8)
    return raw.view(NUMPY[dtype]).reshape(shape)


def test_numpy_table_matches_spec_sizes():
    assert set(NUMPY) == set(DTYPE_SIZES)
    for name, t in NUMPY.items():
        assert np.dtype(t).itemsize == DTYPE_SIZES[name]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
def test_every_dtype_and_shape_round_trips(tmp_path, compress):
    rng = np.random.default_rng(0)
    written = {}
    with StoreWriter(tmp_path / "s", alignment=4096) as w:
        for dtype in DTYPE_SIZES:
            for shape in SHAPES:
                name = f"{dtype}.{'x'.join(map(str, shape)) or 'scalar'}"
                arr = _data(dtype, shape, rng)
                w.add_tensor(name, dtype, shape, arr, compress=compress)
                written[name] = (dtype, shape, arr.tobytes())
        # A non-contiguous source is written through a contiguous copy.
        strided = np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::3]
        w.add_tensor("strided", "int32", strided.shape, np.ascontiguousarray(strided))
        written["strided"] = ("int32", strided.shape, strided.tobytes())
        w.finish()
    with StoreReader(tmp_path / "s") as r:
        assert list(r.index.tensors) == list(written)
        for name, (dtype, shape, raw) in written.items():
            t = r.index.tensors[name]
            assert (t.dtype, t.shape) == (dtype, tuple(shape))
            assert t.encoding == ("zstd" if compress and name != "strided" else "raw")
            assert r.tensor_bytes(t, check=True) == raw
            for p in t.pieces:
                assert p.offset % 4096 == 0
        assert r.verify() == []


def test_expert_group_round_trips_every_dtype(tmp_path):
    rng = np.random.default_rng(1)
    E = 5
    stacked = {f"g.{d}": _data(d, (E, 3, 7), rng) for d in DTYPE_SIZES}
    specs = [(n, n[2:], a.shape) for n, a in stacked.items()]
    with StoreWriter(tmp_path / "s", alignment=4096) as w:
        w.add_expert_group("g", specs, ([a[e] for a in stacked.values()] for e in range(E)))
        w.finish()
    with StoreReader(tmp_path / "s") as r:
        group = r.index.expert_groups["g"]
        assert group.num_experts == E and list(group.tensors) == list(stacked)
        for name, arr in stacked.items():
            assert r.tensor_bytes(r.index.tensors[name], check=True) == arr.tobytes()
        for e, x in enumerate(group.extents):
            assert x.offset % 4096 == 0
            first = r.index.tensors[group.tensors[0]].pieces[e]
            last = r.index.tensors[group.tensors[-1]].pieces[e]
            assert first.offset == x.offset and last.offset + last.length == x.offset + x.length


def test_non_contiguous_buffer_is_refused_by_name(tmp_path):
    from mlxstore.formats import StoreError

    strided = np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::3]
    with pytest.raises(StoreError, match="'bad'.*not C-contiguous"), StoreWriter(tmp_path / "s") as w:
        w.add_tensor("bad", "int32", strided.shape, strided)
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []


def test_sharded_store_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f"t{i}": _data("float32", (1000 + i,), rng) for i in range(12)}
    with StoreWriter(tmp_path / "s", alignment=4096, max_shard_bytes=3 * 4096) as w:
        for n, a in arrays.items():
            w.add_tensor(n, "float32", a.shape, a)
        w.finish()
    with StoreReader(tmp_path / "s") as r:
        assert len(r.index.shards) > 1
        for n, a in arrays.items():
            assert r.tensor_bytes(r.index.tensors[n], check=True) == a.tobytes()
        assert r.verify() == []

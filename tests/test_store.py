"""mlxstore.open: every dtype and odd shape, expert groups, zstd, checksums, truncation."""

from __future__ import annotations

import mmap
import os
import threading

import mlx.core as mx
import numpy as np
import pytest
from conftest import flip_byte
from store_cases import NP_DTYPES, SHAPES, raw_bytes, sample, write_store

import mlxstore
from mlxstore import buffers
from mlxstore.buffers import MX_DTYPES
from mlxstore.formats import ChecksumError, StoreError
from mlxstore.formats.layout import DTYPE_SIZES

DTYPES = sorted(DTYPE_SIZES)


def test_dtype_tables_cover_the_format():
    assert set(MX_DTYPES) == set(DTYPE_SIZES) == set(NP_DTYPES)
    for name, dt in MX_DTYPES.items():
        assert dt.size == DTYPE_SIZES[name]


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory):
    tensors = {f"{d}/{i}": (d, sample(d, s, i)) for d in DTYPES for i, s in enumerate(SHAPES)}
    tensors["big"] = ("float32", sample("float32", (768, 1031)))  # ~3 MiB, odd width
    tensors["big_bf16"] = ("bfloat16", sample("bfloat16", (513, 2049)))
    path = write_store(tmp_path_factory.mktemp("s") / "every", tensors)
    return path, tensors


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_shape_round_trips_bit_exact(every_dtype, dtype):
    path, tensors = every_dtype
    with mlxstore.open(path) as store:
        for i, shape in enumerate(SHAPES):
            src = tensors[f"{dtype}/{i}"][1]
            for check in (False, True):
                arr = store.array(f"{dtype}/{i}", check=check)
                assert arr.dtype == MX_DTYPES[dtype]
                assert tuple(arr.shape) == shape
                assert raw_bytes(arr) == raw_bytes(src)


def test_large_tensors_and_values_not_just_bytes(every_dtype):
    path, tensors = every_dtype
    with mlxstore.open(path) as store:
        big = store.array("big")
        assert np.array_equal(np.asarray(big), tensors["big"][1])
        bf = store.array("big_bf16")
        assert raw_bytes(bf) == raw_bytes(tensors["big_bf16"][1])
        assert mx.array_equal(bf.view(mx.uint16), mx.array(tensors["big_bf16"][1])).item()
        assert store.array("float64/4").dtype == mx.float64  # not silently float32
        assert store.array("bool/4").dtype == mx.bool_


def test_bfloat16_from_mx_source_is_bit_exact(tmp_path):
    x = (mx.random.normal((37, 19)) * 1e3).astype(mx.bfloat16)
    x = mx.concatenate([x.reshape(-1), mx.array([float("inf"), float("-inf"), float("nan"), 0.0, -0.0],
                                                 dtype=mx.bfloat16)])  # fmt: skip
    path = write_store(tmp_path / "s", {"x": ("bfloat16", np.asarray(x.view(mx.uint16)))})
    with mlxstore.open(path) as store:
        y = store.array("x")
    assert y.dtype == mx.bfloat16
    assert mx.array_equal(y.view(mx.uint16), x.view(mx.uint16)).item()


def test_arrays_outlive_the_store(every_dtype):
    path, tensors = every_dtype
    store = mlxstore.open(path)
    arr = store.array("big")
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.array("big")
    assert np.array_equal(np.asarray(arr * 1), tensors["big"][1])


@pytest.fixture()
def experts(tmp_path):
    """Two expert groups with odd part sizes (64-byte padding between parts), in 2+ shards."""
    rng = np.random.default_rng(1)
    groups = {
        "layers.0.mlp.switch_mlp": [
            ("layers.0.mlp.switch_mlp.gate_proj.weight", "uint32", rng.integers(0, 2**32, (5, 7, 3), dtype=np.uint32)),
            ("layers.0.mlp.switch_mlp.gate_proj.scales", "float16", rng.standard_normal((5, 7, 1)).astype(np.float16)),
            ("layers.0.mlp.switch_mlp.gate_proj.biases", "bfloat16", rng.integers(0, 2**16, (5, 7, 1), dtype=np.uint16)),
            ("layers.0.mlp.switch_mlp.down_proj.weight", "uint8", rng.integers(0, 256, (5, 3, 11), dtype=np.uint8)),
        ],
        "layers.1.mlp.experts": [
            ("layers.1.mlp.experts.w", "float32", rng.standard_normal((3, 300, 40)).astype(np.float32)),
            ("layers.1.mlp.experts.b", "int64", rng.integers(-5, 5, (3, 40))),
        ],
    }  # fmt: skip
    dense = {"embed": ("float32", rng.standard_normal((100, 60)).astype(np.float32))}
    path = write_store(tmp_path / "moe", dense, groups=groups, max_shard_bytes=64 << 10, alignment=4096)
    return path, groups


def test_expert_tensors_reassembled_exactly(experts):
    path, groups = experts
    with mlxstore.open(path) as store:
        assert len(store.index.shards) > 1
        assert set(store.expert_groups) == set(groups)
        for prefix, members in groups.items():
            together = store.group_arrays(prefix, check=True)
            assert list(together) == [n for n, _, _ in members]
            for name, dtype, src in members:
                for arr in (store.array(name), store.array(name, check=True), together[name]):
                    assert arr.dtype == MX_DTYPES[dtype] and tuple(arr.shape) == src.shape
                    assert raw_bytes(arr) == raw_bytes(src)


def test_zstd_tensors(tmp_path):
    tensors = {
        "z32": ("float32", np.tile(np.arange(64, dtype=np.float32), 300).reshape(300, 64)),
        "zbf": ("bfloat16", sample("bfloat16", (17, 33))),
        "z0d": ("int8", np.array(-3, dtype=np.int8)),
        "zempty": ("float16", np.zeros((4, 0), np.float16)),
        "plain": ("int32", np.arange(10, dtype=np.int32)),
    }
    path = write_store(tmp_path / "z", tensors, compress={"z32", "zbf", "z0d", "zempty"})
    with mlxstore.open(path) as store:
        assert store.tensor("z32").encoding == "zstd"
        assert store.tensor("z32").stored_bytes < store.tensor("z32").nbytes
        for name, (dtype, src) in tensors.items():
            for check in (False, True):
                arr = store.array(name, check=check)
                assert arr.dtype == MX_DTYPES[dtype] and tuple(arr.shape) == src.shape
                assert raw_bytes(arr) == raw_bytes(src)
        _, nread = store.materialize("z32")
        assert nread == store.tensor("z32").stored_bytes


def test_checksum_errors_name_the_tensor(tmp_path):
    tensors = {"good": ("float32", np.ones(100, np.float32)), "bad": ("int16", np.arange(50, dtype=np.int16)),
               "zbad": ("float32", np.arange(4000, dtype=np.float32))}  # fmt: skip
    path = write_store(tmp_path / "c", tensors, compress={"zbad"})
    with mlxstore.open(path) as store:
        bad, zbad = store.tensor("bad").pieces[0], store.tensor("zbad").pieces[0]
    flip_byte(path / "model.mlxs", bad.offset + 7)
    flip_byte(path / "model.mlxs", zbad.offset + zbad.length // 2)
    with mlxstore.open(path) as store:
        assert raw_bytes(store.array("good", check=True)) == raw_bytes(tensors["good"][1])
        with pytest.raises(ChecksumError, match="'bad'") as e:
            store.array("bad", check=True)
        assert e.value.names == ["tensor 'bad'"]
        assert raw_bytes(store.array("bad")) != raw_bytes(tensors["bad"][1])  # unchecked: as stored
        with pytest.raises(ChecksumError, match="'zbad'"):
            store.array("zbad", check=True)


def test_checksum_error_names_the_expert(experts):
    path, groups = experts
    name = "layers.1.mlp.experts.w"
    with mlxstore.open(path) as store:
        piece = store.tensor(name).pieces[2]
        shard = store.index.shards[piece.shard].name
    flip_byte(path / shard, piece.offset + 100)
    with mlxstore.open(path) as store:
        with pytest.raises(ChecksumError, match=r"'layers.1.mlp.experts.w' expert 2"):
            store.array(name, check=True)
        with pytest.raises(ChecksumError, match="expert 2"):
            store.group_arrays("layers.1.mlp.experts", check=True)
        store.array("layers.1.mlp.experts.b", check=True)  # its neighbour is intact


def test_file_truncated_after_open_raises_store_error(experts):
    path, groups = experts
    store = mlxstore.open(path)
    name = "layers.1.mlp.experts.w"
    piece = store.tensor(name).pieces[-1]
    shard_path = path / store.index.shards[piece.shard].name
    os.truncate(shard_path, piece.offset + piece.length // 2)
    with pytest.raises(StoreError, match=rf"expert {len(store.tensor(name).pieces) - 1}: short read"):
        store.array(name)
    with pytest.raises(StoreError, match="short read"):
        store.group_arrays("layers.1.mlp.experts")
    store.array("embed")  # data before the cut still loads
    store.close()


def test_dense_and_zstd_truncated_after_open(tmp_path):
    tensors = {"a": ("float32", np.ones(5000, np.float32)), "z": ("float32", np.arange(9000, dtype=np.float32))}
    path = write_store(tmp_path / "t", tensors, compress={"z"})
    with mlxstore.open(path) as store:
        a, z = store.tensor("a").pieces[0], store.tensor("z").pieces[0]
        os.truncate(path / "model.mlxs", min(a.offset, z.offset) + 10)
        for name in ("a", "z"):
            with pytest.raises(StoreError, match=r"short read, \d+ of \d+ bytes at offset \d+"):
                store.array(name)
        with pytest.raises(StoreError):
            store.read_file("none")


def test_metadata_files_and_names(tmp_path):
    path = write_store(
        tmp_path / "m",
        {"b": ("int8", np.zeros(3, np.int8)), "a": ("int8", np.ones(2, np.int8))},
        files={"tokenizer.json": b'{"x": 1}', "chat_template.jinja": b"{{ x }}"},
    )
    for target in (path, path / "model.mlxs"):
        with mlxstore.open(target) as store:
            assert store.tensor_names == ["b", "a"]  # write order
            assert store.config == {"model_type": "test"}
            assert store.metadata == {"origin": "tests"}
            assert store.quantization is None
            assert store.files == ["tokenizer.json", "chat_template.jinja"]
            assert store.read_file("tokenizer.json") == b'{"x": 1}'
            assert store.expert_groups == {}
            with pytest.raises(KeyError, match="nope"):
                store.array("nope")
            with pytest.raises(StoreError, match="no embedded file"):
                store.read_file("nope")
    with pytest.raises(StoreError, match="no such store"):
        mlxstore.open(tmp_path / "missing")


def test_mappings_are_lazy_read_only_and_counted(every_dtype):
    path, _ = every_dtype
    with mlxstore.open(path) as store:
        assert store.zero_copy is False  # CPU backend: arrays are read, not wrapped
        store.array("big")
        assert store.bytes_mapped == 0  # reading never maps
        mm = store.mapping(0)
        assert store.mapping(0) is mm
        assert store.bytes_mapped == len(mm) == os.path.getsize(path / "model.mlxs")
        with pytest.raises(TypeError):
            mm[0] = 1
        store.advise("big", "willneed")
        store.advise("big", "dontneed")
    assert mm.closed


def test_zero_copy_cannot_be_forced_on_cpu(every_dtype):
    path, _ = every_dtype
    if buffers.can_wrap():
        pytest.skip("this backend wraps memory")
    with pytest.raises(StoreError, match="cannot wrap"):
        mlxstore.open(path, zero_copy=True)


@pytest.fixture()
def fake_wrap(monkeypatch):
    """Make the CPU backend 'adopt' memory (by copying) to exercise the zero-copy code path."""
    calls = []

    def asarray(a, dtype=None, *, copy=None):
        if copy is False:
            calls.append(a.nbytes)
            return mx.array(a)
        return real(a, dtype, copy=copy)

    real = mx.asarray
    monkeypatch.setattr(mx, "asarray", asarray)
    return calls


def test_zero_copy_path_wraps_page_rounded_views(every_dtype, fake_wrap):
    path, tensors = every_dtype
    with mlxstore.open(path) as store:
        assert store.zero_copy
        for name, (dtype, src) in tensors.items():
            arr = store.array(name, check=True)
            assert arr.dtype == MX_DTYPES[dtype] and tuple(arr.shape) == src.shape, name
            assert raw_bytes(arr) == raw_bytes(src), name
        assert fake_wrap and all(n % mmap.PAGESIZE == 0 for n in fake_wrap)
        assert store.bytes_mapped == os.path.getsize(path / "model.mlxs")
        _, nread = store.materialize("big")
        assert nread == 0  # wrapped, not read


def test_zero_copy_mapping_is_private_and_file_untouched(every_dtype, fake_wrap):
    path, _ = every_dtype
    before = (path / "model.mlxs").read_bytes()
    with mlxstore.open(path) as store:
        mm = store.mapping(0)
        mm[100:104] = b"XXXX"  # what MLX buffer donation could do to a wrapped buffer
    assert (path / "model.mlxs").read_bytes() == before


def test_zero_copy_falls_back_to_reading_per_tensor(every_dtype, monkeypatch):
    path, tensors = every_dtype
    monkeypatch.setattr(buffers, "can_wrap", lambda: True)  # claims to wrap, then refuses
    with mlxstore.open(path) as store:
        assert store.zero_copy
        arr, nread = store.materialize("big")
        assert nread == store.tensor("big").nbytes
        assert raw_bytes(arr) == raw_bytes(tensors["big"][1])


def test_close_leaves_mappings_in_use_alive(every_dtype):
    path, tensors = every_dtype
    store = mlxstore.open(path)
    piece = store.tensor("big").pieces[0]
    view = np.frombuffer(store.mapping(0), np.float32, piece.length // 4, piece.offset)
    store.close()  # the mapping is exported: close must not fail nor unmap it
    assert np.array_equal(view.reshape(768, 1031), tensors["big"][1])


def test_concurrent_reads(experts):
    path, groups = experts
    members = [m for ms in groups.values() for m in ms]
    errors = []
    with mlxstore.open(path) as store:

        def work(k):
            try:
                for i in range(20):
                    name, _, src = members[(k + i) % len(members)]
                    assert raw_bytes(store.array(name, check=True)) == raw_bytes(src)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_expert_group_with_an_empty_member(tmp_path):
    empty, ones = np.zeros((3, 0), np.float32), np.ones((3, 2), np.int8)
    path = write_store(tmp_path / "e", groups={"g": [("g.a", "float32", empty), ("g.b", "int8", ones)]})
    with mlxstore.open(path) as store:
        together = store.group_arrays("g", check=True)
        for name, src in (("g.a", empty), ("g.b", ones)):
            assert raw_bytes(together[name]) == raw_bytes(src)
            assert tuple(store.array(name, check=True).shape) == src.shape
        with pytest.raises(KeyError, match="no expert group"):
            store.group_arrays("nope")


@pytest.fixture()
def mlx_threads(monkeypatch):
    """The ids of the threads that call into MLX (allocation, evaluation, wrapping)."""
    seen: set[int] = set()

    def spy(real):
        def call(*args, **kwargs):
            seen.add(threading.get_ident())
            return real(*args, **kwargs)

        return call

    for name in ("eval", "zeros", "asarray"):
        monkeypatch.setattr(mx, name, spy(getattr(mx, name)))
    return seen


def test_many_arrays_read_on_threads_allocated_and_finished_here(tmp_path, mlx_threads):
    """MLX streams belong to the thread that made them: an array made on a pool thread and
    used after the pool is gone faults the GPU on CUDA. Only the reads may leave."""
    tensors = {f"t{i}": ("float32", sample("float32", (64 + i, 33), i)) for i in range(12)}
    tensors["z"] = ("bfloat16", sample("bfloat16", (40, 64)))
    tensors["empty"] = ("int8", np.zeros((0, 3), np.int8))
    path = write_store(tmp_path / "m", tensors, compress={"z"})
    reads: set[int] = set()
    real_read = mlxstore.osio.read_extent_into

    def read(*args, **kwargs):
        reads.add(threading.get_ident())
        return real_read(*args, **kwargs)

    with mlxstore.open(path) as store:
        names = list(tensors)
        mlx_threads.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mlxstore.osio, "read_extent_into", read)
            arrays = store.arrays(names, check=True, threads=4)
        assert mlx_threads == {threading.get_ident()}
        assert reads and threading.get_ident() not in reads
        for name, arr in zip(names, arrays):
            dtype, src = tensors[name]
            assert arr.dtype == MX_DTYPES[dtype] and tuple(arr.shape) == src.shape
            assert raw_bytes(arr) == raw_bytes(src), name


def test_many_arrays_hold_few_buffers_in_flight(tmp_path, monkeypatch):
    tensors = {f"t{i}": ("int32", np.full(1000, i, np.int32)) for i in range(20)}
    path = write_store(tmp_path / "w", tensors)
    live, most = [0], [0]
    real_begin, real_finish = mlxstore.Store.begin, mlxstore.store.PendingTensor.finish

    def begin(self, *a, **k):
        live[0] += 1
        most[0] = max(most[0], live[0])
        return real_begin(self, *a, **k)

    def finish(self, *a, **k):
        live[0] -= 1
        return real_finish(self, *a, **k)

    monkeypatch.setattr(mlxstore.Store, "begin", begin)
    monkeypatch.setattr(mlxstore.store.PendingTensor, "finish", finish)
    with mlxstore.open(path) as store:
        got = store.arrays(list(tensors), threads=3)
    assert [int(a[0]) for a in got] == list(range(20)) and most[0] <= 6


def test_many_arrays_raise_the_first_failure_after_every_read_ended(tmp_path):
    tensors = {f"t{i}": ("float32", np.full(4096, i, np.float32)) for i in range(8)}
    path = write_store(tmp_path / "f", tensors)
    with mlxstore.open(path) as store:
        bad = store.tensor("t3").pieces[0]
    flip_byte(path / "model.mlxs", bad.offset + 5)
    with mlxstore.open(path) as store:
        with pytest.raises(ChecksumError, match="'t3'"):
            store.arrays(list(tensors), check=True, threads=4)
        assert [float(a[0]) for a in store.arrays(list(tensors), threads=4)][:3] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("unified", [True, False], ids=["mlx-memory", "host-then-copy"])
def test_load_model_calls_mlx_on_the_calling_thread_only(store_dir, mlx_threads, monkeypatch, unified):
    monkeypatch.setattr(buffers, "unified_memory", lambda: unified)
    mlx_threads.clear()
    model, _ = mlxstore.load_model(store_dir("qwen3_moe"))
    assert mlx_threads == {threading.get_ident()}


def test_off_unified_memory_tensors_are_read_into_host_memory_and_copied(every_dtype, experts, monkeypatch):
    """CUDA: a host view of an MLX array would make it managed memory, so reads land in host
    buffers and MLX copies them in (the CPU backend runs the same code path here)."""
    monkeypatch.setattr(buffers, "unified_memory", lambda: False)
    path, tensors = every_dtype
    with mlxstore.open(path) as store:
        names = list(tensors)
        for name, arr in zip(names, store.arrays(names, check=True, threads=3)):
            assert raw_bytes(arr) == raw_bytes(tensors[name][1]), name
    path, groups = experts
    with mlxstore.open(path) as store:
        for prefix, members in groups.items():
            got = store.group_arrays(prefix, check=True)
            for name, _, src in members:
                assert raw_bytes(got[name]) == raw_bytes(src), name

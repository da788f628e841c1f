"""mlxstore.staging and mlxstore.cudamem: host buffers the staged fill reads misses into."""

from __future__ import annotations

import ctypes

import mlx.core as mx
import numpy as np
import pytest

from mlxstore import cudamem, moe, staging
from mlxstore.moe.options import DEFAULT_STAGED_LOAD_SIZE
from mlxstore.moe.spec import spec_of
from mlxstore.sizes import parse_size


def test_pack_loads_takes_whole_extents_that_fit():
    assert staging.pack_loads([5, 5, 5], 15) == [3]
    assert staging.pack_loads([5, 5, 5], 5) == [1, 1, 1]
    assert staging.pack_loads([4, 4, 4, 4, 4], 8) == [2, 2, 1]
    assert staging.pack_loads([6, 1, 1, 7], 8) == [3, 1]
    assert staging.pack_loads([], 8) == []
    with pytest.raises(ValueError, match="extent of 9 bytes"):
        staging.pack_loads([4, 9], 8)


def test_buffers_hold_the_largest_expert_at_least():
    assert staging.buffer_bytes(8 << 20, 1 << 20) == 8 << 20
    assert staging.buffer_bytes(1, 3 << 20) == 3 << 20
    assert staging.staging_bytes(1, 3 << 20) == staging.BUFFERS * (3 << 20)


def test_buffers_hold_no_more_than_a_layer_fills_in_one_call():
    """A call fills at most its layer's slots: a buffer past that would never be used."""
    assert staging.buffer_bytes(8 << 20, 1 << 20, slots=3) == 3 << 20
    assert staging.buffer_bytes(8 << 20, 1 << 20, slots=16) == 8 << 20
    assert staging.buffer_bytes(8 << 20, 3 << 20, slots=1) == 3 << 20


def test_a_small_budget_gets_staging_sized_to_its_slots(store_dir):
    """A budget too small for two default-sized buffers still plans and loads staged, with
    buffers the size of its slots; one slot more would not fit."""
    store = store_dir("qwen3_moe")
    spec = spec_of(store)
    kw = {"headroom": "256KiB", "max_context": 256}
    full = staging.staging_bytes(parse_size(DEFAULT_STAGED_LOAD_SIZE), spec.largest_expert_bytes)
    model, _ = moe.load(store, fill="staged", memory_budget="2400KiB", **kw)
    plan = moe.plan_of(model)
    assert plan.total_bytes <= plan.budget < full and plan.slots_per_layer < spec.num_experts
    assert plan.staging_bytes == staging.staging_bytes(parse_size(DEFAULT_STAGED_LOAD_SIZE),
                                                       spec.largest_expert_bytes, plan.slots_per_layer)  # fmt: skip
    banks = [m.bank for _, m in model.named_modules() if hasattr(m, "bank")]
    assert banks[0].staging.nbytes == plan.staging_bytes
    more = spec.plan(None, slots_per_layer=plan.slots_per_layer + 1, prefill_step_size=plan.prefill_step_size,
                     fill="staged", **kw)  # fmt: skip
    assert more.total_bytes > plan.budget


def test_a_buffer_is_rewritten_only_after_its_copies_ran():
    """A lazy copy out of a buffer must see the bytes it was queued for, even when the
    buffer comes round again and is overwritten before anyone evaluates the copy."""
    host = staging.HostStaging(64)
    first = host.take()
    first.view[:] = bytes(range(64))
    copy = first.array[:16] + 0  # lazy: reads the buffer when evaluated
    first.readers = [copy]
    for _ in range(staging.BUFFERS):
        buf = host.take()
    assert buf is first
    buf.view[:16] = b"\xff" * 16
    assert np.array(copy).tolist() == list(range(16))


def test_buffers_are_advised_exactly_on_cuda():
    """On CUDA the runtime MLX loaded takes the advice; elsewhere nothing is asked."""
    cuda = getattr(mx, "cuda", None)
    on_cuda = cuda is not None and cuda.is_available() and mx.default_device() == mx.gpu
    host = staging.HostStaging(4096)
    assert host.advised is on_cuda and host.nbytes == staging.BUFFERS * 4096


class FakeRuntime:
    """Records what would reach libcudart."""

    def __init__(self, version: int, v2: bool = True):
        self.version, self.calls = version, []
        self.cudaMemAdvise = self._entry("cudaMemAdvise")
        if v2:
            self.cudaMemAdvise_v2 = self._entry("cudaMemAdvise_v2")

    def _entry(self, name):
        def call(address, nbytes, advice, location):
            self.calls.append((name, address, nbytes, advice, location.type, location.id))
            return 0

        return call

    def cudaRuntimeGetVersion(self, out):
        ctypes.cast(out, ctypes.POINTER(ctypes.c_int))[0] = self.version
        return 0

    def cudaGetDevice(self, out):
        ctypes.cast(out, ctypes.POINTER(ctypes.c_int))[0] = 3
        return 0


@pytest.mark.parametrize("version, entry", [(13000, "cudaMemAdvise"), (12080, "cudaMemAdvise_v2")])
def test_prefer_host_asks_host_residence_and_device_mapping(version, entry):
    runtime = FakeRuntime(version)
    view = memoryview(bytearray(8192))
    assert cudamem.prefer_host(view, runtime) is True
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    assert runtime.calls == [
        (entry, address, 8192, cudamem.SET_PREFERRED_LOCATION, cudamem.LOCATION_HOST, 0),
        (entry, address, 8192, cudamem.SET_ACCESSED_BY, cudamem.LOCATION_DEVICE, 3),
    ]


def test_an_old_runtime_without_located_advice_is_left_alone():
    runtime = FakeRuntime(11080, v2=False)
    assert cudamem.prefer_host(memoryview(bytearray(16)), runtime) is False
    assert runtime.calls == []


def test_loaded_runtime_reads_the_process_mappings(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /nowhere/libcudart.so.13\n7f02-7f03 r-xp 0 08:01 2 /usr/lib/libc.so.6\n")
    assert cudamem.loaded_runtime(str(maps)) is None  # listed but not loadable: nothing
    assert cudamem.loaded_runtime(str(tmp_path / "absent")) is None


def test_plan_counts_the_staging_buffers(store_dir):
    """moe.load's plan and `mlxstore plan`'s agree on what the staged fill holds."""
    store = store_dir("qwen3_moe")
    kw = {"memory_budget": "2400KiB", "headroom": "256KiB", "max_context": 256}
    direct, _ = moe.load(store, fill="direct", **kw)
    staged, _ = moe.load(store, fill="staged", staged_load_size="1MiB", **kw)
    pd, ps = moe.plan_of(direct), moe.plan_of(staged)
    spec = spec_of(store)
    largest = spec.largest_expert_bytes
    assert largest > 0 and pd.staging_bytes == 0
    assert ps.staging_bytes == staging.staging_bytes(1 << 20, largest, ps.slots_per_layer)
    assert ps.total_bytes <= ps.budget and ps.slots_per_layer < pd.slots_per_layer
    assert spec.plan(kw["memory_budget"], headroom="256KiB", max_context=256, fill="staged", staged_load_size="1MiB") == ps
    assert spec.plan(kw["memory_budget"], headroom="256KiB", max_context=256, fill="direct") == pd
    banks = [m.bank for _, m in staged.named_modules() if hasattr(m, "bank")]
    assert banks[0].staging.nbytes == ps.staging_bytes and all(b.staging is banks[0].staging for b in banks)
    assert largest == max(x.length for b in banks for x in b.group.extents)



def test_alike_experts_are_scattered_others_copied_one_by_one(model_dir, store_dir, monkeypatch):
    """staged_copy="scatter": a staged load of several experts laid out alike is one scatter
    per tensor; where a group's extents differ, or with "slices", each expert and tensor is
    a slice update. Every way gives the resident logits."""
    import dataclasses

    import mlx_lm
    from conftest import random_prompt

    import mlxstore
    from mlxstore.formats.index import Extent
    from mlxstore.moe.bank import _alike_offsets
    from mlxstore.moe.streaming import StreamingExperts

    store = store_dir("qwen3_moe")
    with mlxstore.open(store) as s:
        group = next(iter(s.expert_groups.values()))
        tensors = [s.tensor(n) for n in group.tensors]
    assert _alike_offsets(group, tensors) == [t.pieces[0].offset - group.extents[0].offset for t in tensors]
    first = group.extents[0]
    longer = dataclasses.replace(group, extents=(Extent(first.shard, first.offset, first.length + 4096), *group.extents[1:]))
    assert _alike_offsets(longer, tensors) is None
    prompt = random_prompt(24)
    resident, _ = mlx_lm.load(str(model_dir("qwen3_moe")))
    want = np.array(resident(prompt).astype(mx.float32))
    real = mx.array.__setitem__
    for copy, alike in (("scatter", True), ("scatter", False), ("slices", True)):
        model, _ = moe.load(store, slots_per_layer=4, fill="staged", staged_load_size="8MiB", staged_copy=copy)
        if not alike:
            for m in model.modules():
                if isinstance(m, StreamingExperts):
                    m.bank._offsets = None
        indices: list[type] = []
        monkeypatch.setattr(mx.array, "__setitem__", lambda a, i, v, seen=indices: (seen.append(type(i)), real(a, i, v))[1])
        got = np.array(model(prompt).astype(mx.float32))
        monkeypatch.undo()
        assert np.array_equal(got, want), f"{copy}, alike={alike}"
        assert indices and (mx.array in indices) == (copy == "scatter" and alike), set(indices)


@pytest.mark.parametrize("rows", [[0, 1, 2], [4, 1, 3]])
@pytest.mark.parametrize("length", [80, 74])
def test_scatter_puts_each_tensor_row_in_its_slot(length, rows):
    """`_scatter_load` on a load of three experts laid out alike: each tensor's row lands in
    its slot byte for byte, whether the extent length lets a tensor's dtype view the load
    while contiguous (80) or not (74: the column range is reinterpreted instead), and
    whether the experts are the buffer's first rows or others (a read-ahead buffer's)."""
    from types import SimpleNamespace

    from mlxstore.moe.bank import ExpertBank

    experts, slots = 4, 5
    tensors = [SimpleNamespace(nbytes=experts * 6, shape=(experts, 6)),  # uint8 rows of 6 at offset 0
               SimpleNamespace(nbytes=experts * 64, shape=(experts, 4, 4))]  # uint32 rows of 64 at offset 8  # fmt: skip
    arrays = [mx.zeros((slots, 6), dtype=mx.uint8), mx.zeros((slots, 4, 4), dtype=mx.uint32)]
    bank = SimpleNamespace(tensors=tensors, arrays=arrays, _offsets=[0, 8])
    data = np.random.default_rng(0).integers(0, 256, size=5 * length, dtype=np.uint8)
    buf = SimpleNamespace(array=mx.array(data))
    load = [((e, s), SimpleNamespace(length=length)) for e, s in ((3, 4), (0, 1), (2, 0))]
    ExpertBank._scatter_load(bank, buf, load, rows)
    mx.eval(arrays)
    table = data.reshape(5, length)
    for r, ((_, s), _) in zip(rows, load):
        assert np.array_equal(np.array(arrays[0][s]), table[r, 0:6])
        assert np.array_equal(np.array(arrays[1][s]).view(np.uint8).reshape(-1), table[r, 8:72])
    assert not np.array(arrays[0][2]).any() and not np.array(arrays[1][3]).any()  # slots not in the load

"""Injected read faults (a test double for os.preadv): EIO and short reads raise a clear
StoreError, leave every slot bank consistent (each resident slot holds exactly its expert's
bytes), and the next call succeeds once the fault is gone. Partial reads are completed."""

from __future__ import annotations

import errno
import os
import threading

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import random_prompt

import mlxstore
from mlxstore import moe
from mlxstore.formats import StoreError

REAL_PREADV = os.preadv


class FaultyPreadv:
    """os.preadv that misbehaves on every `every`-th call (thread-safe: reads run in a pool).

    mode "eio": scribble 0xFF into the buffers, then fail with EIO; "eof": return 0 (the
    file ended); "partial": fill only half of the first buffer and return that count.
    """

    def __init__(self, mode: str, every: int):
        self.mode, self.every = mode, every
        self.calls = self.faults = 0
        self._lock = threading.Lock()

    def __call__(self, fd, buffers, offset, *args):
        with self._lock:
            self.calls += 1
            fault = self.calls % self.every == 0
            self.faults += fault
        if not fault:
            return REAL_PREADV(fd, buffers, offset, *args)
        if self.mode == "eio":
            for b in buffers:
                view = memoryview(b).cast("B")
                view[:] = b"\xff" * len(view)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if self.mode == "eof":
            return 0
        first = memoryview(buffers[0]).cast("B")
        return REAL_PREADV(fd, [first[: max(1, len(first) // 2)]], offset)


def _logits(model, prompt) -> np.ndarray:
    return np.array(model(prompt).astype(mx.float32))


def _bytes(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint8) if a.dtype != mx.uint8 else a)


def _assert_banks_consistent(model, store) -> int:
    """Every resident slot holds exactly its expert's bytes; returns how many were checked."""
    checked = 0
    with mlxstore.open(store) as s:
        for _, m in model.named_modules():
            bank = getattr(m, "bank", None)
            if bank is None:
                continue
            stacked = s.group_arrays(bank.name)
            for expert, slot in bank.policy.resident().items():
                for t, arr in zip(bank.tensors, bank.arrays):
                    assert np.array_equal(_bytes(arr[slot]), _bytes(stacked[t.name][expert])), (bank.name, expert)
                    checked += 1
    return checked


@pytest.fixture(scope="module")
def reference(model_dir, store_dir):
    src, store = model_dir("qwen3_moe"), store_dir("qwen3_moe")
    resident, _ = mlx_lm.load(str(src))
    prompts = [random_prompt(12, seed=seed) for seed in range(3)]
    return store, prompts, [_logits(resident, p) for p in prompts]


@pytest.mark.parametrize("fill, load_size", [("direct", "8MiB"), ("staged", "8MiB"), ("staged", 1)])
@pytest.mark.parametrize("mode, match", [("eio", "Input/output error"), ("eof", "short read")])
def test_fault_raises_leaves_banks_consistent_and_next_call_succeeds(reference, monkeypatch, mode, match, fill,
                                                                      load_size):  # fmt: skip
    """A failed read (in any of a staged call's loads) empties the slots it was filling."""
    store, prompts, want = reference
    model, _ = moe.load(store, slots_per_layer=4, fill=fill, staged_load_size=load_size)
    assert np.array_equal(_logits(model, prompts[0]), want[0])
    fault = FaultyPreadv(mode, every=3)
    monkeypatch.setattr(os, "preadv", fault)
    with pytest.raises(StoreError, match=match) as info:
        for p in prompts[1:]:
            _logits(model, p)
    assert "expert" in str(info.value)
    assert fault.faults > 0
    monkeypatch.setattr(os, "preadv", REAL_PREADV)  # the fault is gone (the banks are as it left them)
    assert _assert_banks_consistent(model, store) > 0
    for p, w in zip(prompts, want):
        assert np.array_equal(_logits(model, p), w)
    assert _assert_banks_consistent(model, store) > 0
    total = moe.stats(model).total
    assert total.hits + total.misses == total.requests


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_partial_reads_are_completed(reference, monkeypatch, fill):
    store, prompts, want = reference
    model, _ = moe.load(store, slots_per_layer=4, fill=fill)
    fault = FaultyPreadv("partial", every=1)  # every read comes back half-filled
    monkeypatch.setattr(os, "preadv", fault)
    for p, w in zip(prompts, want):
        assert np.array_equal(_logits(model, p), w)
    assert fault.faults > 0


@pytest.mark.parametrize("mode, match", [("eio", "Input/output error"), ("eof", "short read")])
def test_fault_on_lazy_tensor_read(reference, monkeypatch, mode, match):
    store, _, _ = reference
    with mlxstore.load(store) as lazy, mlxstore.open(store) as s:
        name = "model.layers.0.self_attn.q_proj.weight"
        monkeypatch.setattr(os, "preadv", FaultyPreadv(mode, every=1))
        with pytest.raises(StoreError, match=match) as info:
            lazy[name]
        assert repr(name) in str(info.value)
        assert name not in lazy.residency  # nothing half-read is kept
        monkeypatch.setattr(os, "preadv", REAL_PREADV)
        assert np.array_equal(_bytes(lazy[name]), _bytes(s.array(name)))

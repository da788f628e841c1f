"""Micro-benchmarks of the streaming hot path: slot lookup, extent read, bank write.

Run with `python -m pytest bench/micro --benchmark-only` (not part of the test suite, whose
testpaths is tests/). Experts have Qwen3-30B-A3B's real shapes (hidden 2048, expert
intermediate 768, 4-bit g64, float32 scales: 2.95 MB per expert); lookups replay the real
Qwen3 trace. Per-token cost of each piece = its time x MoE layers (48 at full scale).
"""

from __future__ import annotations

import os
from itertools import cycle
from pathlib import Path

import numpy as np
import pytest

from bench.harness.policy_sim import default_trace
from mlxstore.formats.route_trace import load_route_trace
from mlxstore.moe.policy import DEFAULT_POLICY, make_policy

TRACE = default_trace()


@pytest.fixture(scope="module")
def calls() -> list[tuple[int, ...]]:
    trace = load_route_trace(TRACE)
    return [c for layer in range(trace.n_layer) for c in trace.layer_calls(layer)]


@pytest.mark.parametrize("policy", [DEFAULT_POLICY, "lru"])
@pytest.mark.parametrize("slots", [8, 32])
def test_slot_lookup(benchmark, calls, policy, slots):
    """One layer's lookup of one token's experts (policy bookkeeping only)."""
    p = make_policy(policy, slots, 128)
    it = cycle(calls)
    benchmark(lambda: p.lookup(next(it)))


def test_route_to_slots(benchmark, calls):
    """Router ids -> distinct experts -> lookup -> slot-id array: a layer's host work per token."""
    import mlx.core as mx

    p = make_policy(DEFAULT_POLICY, 32, 128)
    ids = cycle([np.array(c[:8], dtype=np.uint32).reshape(1, 1, -1) for c in calls])

    def step():
        x = next(ids)
        experts = np.unique(x)
        slots, _ = p.lookup(experts.tolist())
        table = np.asarray(slots, dtype=np.uint32)
        return mx.array(table[np.searchsorted(experts, x)])

    benchmark(step)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A one-layer real-shape store with 16 experts (47 MB of experts)."""
    from bench.harness.genmodel import make_config, write_model
    from mlxstore.pack import pack

    root = tmp_path_factory.mktemp("micro")
    cfg = make_config(layers=1, experts=16, vocab=1024, dtype="float32")
    write_model(root / "src", cfg)
    return pack(root / "src", root / "m.store", progress=False)


@pytest.fixture(scope="module")
def bank(store):
    from mlxstore import moe
    from mlxstore.moe.streaming import StreamingExperts

    model, _ = moe.load(store, slots_per_layer=1)
    banks = [m.bank for _, m in model.named_modules() if isinstance(m, StreamingExperts)]
    yield banks[0]
    del model


def _drop(bank) -> None:
    for fd in set(bank.fds):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_extent_read_into_slot(benchmark, bank, cache):
    """A miss: one expert's extent read by the bank straight into its slot (scatter preadv)."""
    experts = cycle(range(bank.num_experts))
    if cache == "cold":
        benchmark.pedantic(lambda: bank.ensure([next(experts)]), setup=lambda: _drop(bank),
                           rounds=30, iterations=1)  # fmt: skip
    else:
        for e in range(bank.num_experts):
            bank.ensure([e])
        benchmark(lambda: bank.ensure([next(experts)]))
    benchmark.extra_info["expert_bytes"] = bank.group.extents[0].length


def test_extent_read_plain(benchmark, bank):
    """Reference: the same extent into one numpy buffer (warm), no bank, no policy."""
    from mlxstore import osio

    extent = bank.group.extents[0]
    buf = np.empty(extent.length, dtype=np.uint8)
    fd = bank.fds[extent.shard]
    benchmark(lambda: osio.read_extent_into(fd, extent.offset, [buf]))


def test_bank_write(benchmark, bank):
    """Copying one expert's bytes from host staging into a bank slot (the staging design)."""
    staging = [np.random.default_rng(0).integers(0, 255, row, dtype=np.uint8) for _, row in bank._rows]

    def write():
        for (view, row), data in zip(bank._rows, staging):
            view[0:row] = data

    benchmark(write)
    bank.policy.forget(0)  # slot 0 no longer holds the expert the policy thinks it does
    benchmark.extra_info["expert_bytes"] = sum(row for _, row in bank._rows)

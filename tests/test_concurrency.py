"""Threads and lifetimes: I/O threads never outlive their model, exit with a model loaded
does not hang, and two models over one store do not interfere."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import mlx.core as mx
import numpy as np
import pytest
from conftest import random_prompt

import mlxstore
from mlxstore import moe
from mlxstore.mlxlm import make_prompt_cache


def _io_threads() -> set[threading.Thread]:
    """Thread objects, not names: every pool numbers its threads from mlxstore-io_0."""
    return {t for t in threading.enumerate() if t.name.startswith("mlxstore-io")}


class Greedy:
    """One greedy decode, advanced a token at a time (so two can be interleaved)."""

    def __init__(self, model, prompt: mx.array):
        self.model, self.cache = model, make_prompt_cache(model)
        self.logits = model(prompt, cache=self.cache)[:, -1]
        self.trace: list[np.ndarray] = []

    def step(self) -> None:
        self.trace.append(np.array(self.logits.astype(mx.float32)))
        token = mx.argmax(self.logits, axis=-1, keepdims=True)
        self.logits = self.model(token, cache=self.cache)[:, -1]


def _alone(model, prompt, steps: int) -> list[np.ndarray]:
    g = Greedy(model, prompt)
    for _ in range(steps):
        g.step()
    return g.trace


@pytest.fixture(scope="module")
def store(store_dir):
    return store_dir("qwen3_moe")


def test_io_threads_end_with_their_model(store):
    gc.collect()
    before = _io_threads()
    model, _ = moe.load(store, slots_per_layer=4)
    mx.eval(model(random_prompt(16, seed=0)))  # misses in parallel: the pool starts its threads
    assert _io_threads() - before, "the test needs the I/O pool to have started"
    del model
    gc.collect()
    assert _io_threads() <= before


_EXIT_WITH_MODEL = """
import sys, threading
import mlx.core as mx
from mlxstore import moe
model, _ = moe.load(sys.argv[1], slots_per_layer=4, prefetch=sys.argv[2])
model(mx.array([[5, 9, 17, 33, 65, 129, 257, 300, 400, 7, 11, 13]]))
assert any(t.name.startswith("mlxstore-io") for t in threading.enumerate())
print("loaded", flush=True)
if sys.argv[3] == "exit":
    sys.exit(0)
"""


@pytest.mark.parametrize("prefetch, how", [("none", "end"), ("next-layer", "exit"), ("temporal", "end")])
def test_interpreter_exit_with_a_model_loaded_does_not_hang(store, prefetch, how):
    r = subprocess.run([sys.executable, "-c", _EXIT_WITH_MODEL, str(store), prefetch, how],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("shared", [False, True], ids=["two-opens", "one-Store"])
def test_two_models_on_one_store_do_not_interfere(store, shared):
    steps = 8
    source = mlxstore.open(store) if shared else store

    alive = []  # keep both models alive for the whole interleaving

    def load_a():
        alive.append(moe.load(source, slots_per_layer=4)[0])
        return alive[-1]

    def load_b():
        alive.append(moe.load(source, slots_per_layer=8, prefetch="next-layer", policy="lfuda")[0])
        return alive[-1]

    pa, pb = random_prompt(16, seed=1), random_prompt(16, seed=2)
    want_a, want_b = _alone(load_a(), pa, steps), _alone(load_b(), pb, steps)
    ga, gb = Greedy(load_a(), pa), Greedy(load_b(), pb)  # fresh banks, filled turn by turn
    for _ in range(steps):
        ga.step()
        gb.step()
    assert all(np.array_equal(x, y) for x, y in zip(ga.trace, want_a))
    assert all(np.array_equal(x, y) for x, y in zip(gb.trace, want_b))


def test_a_model_outlives_another_on_the_same_store_object(store, tmp_path, store_dir):
    s = mlxstore.open(store)
    first, _ = moe.load(s, slots_per_layer=4)
    second, _ = moe.load(s, slots_per_layer=4)
    want = _alone(second, random_prompt(16, seed=3), 4)
    for _, m in second.named_modules():  # empty the banks: the next run must read again
        if hasattr(m, "bank"):
            for slot in range(m.bank.num_slots):
                m.bank.policy.forget(slot)
    del first
    gc.collect()
    other = store_dir("mixtral")  # descriptors freed by the close are reused by new opens
    fds = [os.open(other / "model.mlxs", os.O_RDONLY) for _ in range(8)]
    try:
        got = _alone(second, random_prompt(16, seed=3), 4)
    finally:
        for fd in fds:
            os.close(fd)
    assert all(np.array_equal(x, y) for x, y in zip(got, want))

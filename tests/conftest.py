"""What test files share: synthetic models and their stores (built once per session), and
the helpers several files need (random prompts, logits traces, flipping a byte of a file)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from synth_cases import CASES

from mlxstore.mlxlm import make_prompt_cache
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """`model_dir(case_id)`: the source directory of a case from synth_cases.CASES."""
    built: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in built:
            arch, options = CASES[case]
            built[case] = make_model_dir(arch, tmp_path_factory.mktemp("src") / case, **options)
        return built[case]

    return get


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, model_dir):
    """`store_dir(case_id)`: that case packed with default options."""
    built: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in built:
            built[case] = pack(model_dir(case), tmp_path_factory.mktemp("store") / case, progress=False)
        return built[case]

    return get


@pytest.fixture(scope="session")
def model_and_store(model_dir, store_dir):
    """`model_and_store(case_id)`: (source directory, store) of a case."""
    return lambda case: (model_dir(case), store_dir(case))


def random_prompt(n: int, seed: int = 0, vocab: int = 512) -> mx.array:
    """A (1, n) batch of token ids, past the synthetic tokenizer's special ids (0..2)."""
    return mx.array(np.random.default_rng(seed).integers(3, vocab, size=(1, n)), dtype=mx.int32)


def logits_trace(model, prompt: mx.array, steps: int) -> list[np.ndarray]:
    """Prompt logits, then greedy decode logits one token at a time with a KV cache."""
    cache = make_prompt_cache(model)
    logits = model(prompt, cache=cache)
    out = [np.array(logits.astype(mx.float32))]
    token = mx.argmax(logits[:, -1:], axis=-1)
    for _ in range(steps):
        logits = model(token, cache=cache)
        out.append(np.array(logits.astype(mx.float32)))
        token = mx.argmax(logits[:, -1:], axis=-1)
    return out


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at `offset` of `path` with `mask`, in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))

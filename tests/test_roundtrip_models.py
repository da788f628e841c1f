"""mlxstore.load_model(store) gives logits bit-identical to mlx_lm.load(source) for every case."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from synth_cases import CASES

import mlxstore


def _logits(model, tokens: np.ndarray) -> np.ndarray:
    out = model(mx.array(tokens))
    mx.eval(out)
    return np.array(out.view(mx.uint16) if out.dtype == mx.bfloat16 else out)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_bit_identical_to_mlx_lm(model_dir, store_dir, case):
    tokens = np.random.default_rng(0).integers(3, 512, size=(2, 80))  # >= 64 ids: sorted expert path
    reference, ref_tok = mlx_lm.load(str(model_dir(case)))
    expected = _logits(reference, tokens)
    model, tokenizer = mlxstore.load_model(store_dir(case))
    got = _logits(model, tokens)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    single = tokens[:1, :3]  # few ids: the unsorted single-token path
    assert np.array_equal(_logits(model, single), _logits(reference, single))
    assert tokenizer.encode("w10 w11 w12") == ref_tok.encode("w10 w11 w12")
    assert tokenizer.eos_token_ids == ref_tok.eos_token_ids

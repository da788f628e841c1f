"""A store's config, quantization and tensor shapes are untrusted too: whatever does not
build or fit an mlx-lm model ends in StoreError from load_model and moe.load."""

from __future__ import annotations

import copy

import mlx.core as mx
import pytest

import mlxstore
from bench.harness.hostile import base_of, with_index
from mlxstore import moe


def _set(key, value):
    return lambda idx: idx["config"].__setitem__(key, value)


def _first_quantized(key, value):
    return lambda idx: next(iter(idx["quantization"].values())).__setitem__(key, value)


def _reshape(name):
    def edit(idx):
        shape = idx["tensors"][name]["shape"]
        idx["tensors"][name]["shape"] = shape[::-1]  # same bytes, wrong layout

    return edit


EDITS = {
    "model_type list": (_set("model_type", ["qwen3_moe"]), "does not build"),
    "model_type int": (_set("model_type", 5), "not supported"),
    "model_type of a helper module": (_set("model_type", "base"), "does not build"),
    "model_type missing": (lambda idx: idx["config"].pop("model_type"), "does not build"),
    "hidden_size string": (_set("hidden_size", "wide"), "does not build"),
    "hidden_size beyond int32": (_set("hidden_size", 2**40), "does not build"),
    "zero attention heads": (_set("num_attention_heads", 0), "does not build"),
    "bits 0": (_first_quantized("bits", 0), "quantization does not apply"),
    "group size 3": (_first_quantized("group_size", 3), "quantization does not apply"),
    "transposed embedding": (_reshape("model.embed_tokens.weight"), "has shape"),
}


@pytest.fixture(scope="module")
def base(store_dir):
    return base_of(store_dir("qwen3_moe"))


@pytest.mark.parametrize("loader", ["load_model", "moe.load"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_bad_config_is_a_store_error(base, tmp_path, edit, loader):
    change, match = EDITS[edit]
    idx = copy.deepcopy(base.index)
    change(idx)
    for name, data in with_index(base, idx).items():
        (tmp_path / name).write_bytes(data)
    load = mlxstore.load_model if loader == "load_model" else (lambda p: moe.load(p, slots_per_layer=2))
    with pytest.raises(mlxstore.StoreError, match=match):
        load(tmp_path)


def test_expert_tensor_of_the_wrong_shape_is_refused_by_moe_load(tmp_path):
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir

    src = make_model_dir("qwen3_moe", tmp_path / "src", config_overrides={"moe_intermediate_size": 128})
    base = base_of(pack(src, tmp_path / "store", progress=False))
    idx = copy.deepcopy(base.index)
    t = idx["tensors"]["model.layers.0.mlp.switch_mlp.gate_proj.weight"]
    t["shape"] = [t["shape"][0], t["shape"][2], t["shape"][1]]  # same bytes per expert, wrong layout
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, data in with_index(base, idx).items():
        (bad / name).write_bytes(data)
    with pytest.raises(mlxstore.StoreError, match="has shape"):
        mlxstore.load_model(bad)
    with pytest.raises(mlxstore.StoreError, match="has shape"):
        model, _ = moe.load(bad, slots_per_layer=4)
        model(mx.array([[1, 5, 9, 300]]))  # without the check the shapes only fail here

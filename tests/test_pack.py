"""pack: the store holds exactly what mlx_lm.load builds, laid out expert-major and aligned."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten
from synth_cases import CASES

from mlxstore.cli.main import main
from mlxstore.formats import StoreReader
from mlxstore.mlxlm import SwitchGLU, SwitchMLP, load_model
from mlxstore.pack import pack


def _bits(a: mx.array) -> bytes:
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a).tobytes()


def _files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_store_holds_what_mlx_lm_loads(model_dir, store_dir, case):
    src, store = model_dir(case), store_dir(case)
    model, config = load_model(src)
    params = dict(tree_flatten(model.parameters()))
    with StoreReader(store) as r:
        ix = r.index
        assert set(ix.tensors) == set(params)
        for name, value in params.items():
            t = ix.tensors[name]
            assert (t.dtype, t.shape) == (str(value.dtype).split(".")[-1], tuple(value.shape)), name
            assert r.tensor_bytes(t, check=True) == _bits(value), name
        assert ix.config == json.loads(json.dumps(config))
        quantized = {p: {"group_size": m.group_size, "bits": m.bits, "mode": m.mode}
                     for p, m in model.named_modules() if hasattr(m, "bits")}  # fmt: skip
        assert (ix.quantization or {}) == quantized
        switches = {p for p, m in model.named_modules() if isinstance(m, (SwitchGLU, SwitchMLP))}
        assert set(ix.expert_groups) == switches
        for prefix, group in ix.expert_groups.items():
            under = [n for n in params if n.startswith(prefix + ".")]
            assert sorted(group.tensors) == sorted(under)
        source_files = {n: b for n, b in _files(src).items() if not n.endswith((".safetensors", ".index.json"))}
        assert set(ix.files) == set(source_files) >= {"config.json", "tokenizer.json", "tokenizer_config.json"}
        for name, data in source_files.items():
            assert r.read_file(name) == data
        meta = ix.metadata
        assert all(isinstance(v, str) for v in meta.values())
        assert meta["model_type"] == config["model_type"] and meta["source"] == case
        expert = sum(params[n].nbytes for g in ix.expert_groups.values() for n in g.tensors)
        assert int(meta["expert_bytes"]) == expert
        assert int(meta["dense_bytes"]) == sum(v.nbytes for v in params.values()) - expert


@pytest.mark.parametrize("case", list(CASES))
def test_info_json_shows_aligned_extents_and_one_extent_per_expert(store_dir, case):
    result = CliRunner().invoke(main, ["info", "--json", str(store_dir(case))])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    align = info["alignment"]
    assert align == 16384
    for name, t in info["tensors"].items():
        if "expert_group" not in t:
            assert len(t["extents"]) <= 1 and t["mappable"]
            for x in t["extents"]:
                assert x["offset"] % align == 0, name
    for x in info["files"].values():
        assert x["offset"] % align == 0
    for prefix, g in info["expert_groups"].items():
        assert len(g["extents"]) == g["num_experts"] > 1
        for e, x in enumerate(g["extents"]):
            assert x["offset"] % align == 0, (prefix, e)
            parts = [info["tensors"][n]["extents"][e] for n in g["tensors"]]
            assert parts[0]["offset"] == x["offset"]
            assert parts[-1]["offset"] + parts[-1]["length"] == x["offset"] + x["length"]
            for a, b in zip(parts, parts[1:]):  # in order, gaps only to the next 64 bytes
                assert a["file"] == b["file"] == x["file"]
                assert a["offset"] + a["length"] <= b["offset"] < a["offset"] + a["length"] + 64
    expected_groups = 0 if case.startswith("llama") else (4 if case == "qwen3_next" else 2)
    assert len(info["expert_groups"]) == expected_groups


def test_pack_is_deterministic(model_dir, tmp_path):
    src = model_dir("qwen3_moe-mixed")
    a = pack(src, tmp_path / "a", progress=False)
    b = pack(src, tmp_path / "b", progress=False)
    assert _files(a) == _files(b)


def test_options_alignment_shards_and_compression(model_dir, tmp_path):
    src = model_dir("qwen3_moe")
    store = pack(src, tmp_path / "s", alignment=4096, max_shard_bytes=64 * 4096,
                 compress_dense=True, progress=False)  # fmt: skip
    model, _ = load_model(src)
    params = dict(tree_flatten(model.parameters()))
    with StoreReader(store) as r:
        ix = r.index
        assert ix.alignment == 4096 and len(ix.shards) > 1 and ix.required_features == ["zstd"]
        for s in ix.shards:
            assert (store / s.name).stat().st_size == s.size
        for name, t in ix.tensors.items():
            assert t.encoding == ("raw" if t.expert_group else "zstd")
            assert r.tensor_bytes(t, check=True) == _bits(params[name])
        for g in ix.expert_groups.values():
            for x in g.extents:
                assert x.offset % 4096 == 0
        assert r.verify() == []
    info = CliRunner().invoke(main, ["info", "--extents", str(store)])
    assert info.exit_code == 0 and "cannot be mapped" in info.output and "not mappable" in info.output


def test_overwrite_replaces_an_existing_store(model_dir, tmp_path):
    dst = pack(model_dir("llama"), tmp_path / "s", progress=False)
    pack(model_dir("mixtral"), dst, overwrite=True, progress=False)
    with StoreReader(dst) as r:
        assert r.index.metadata["model_type"] == "mixtral"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_pack_from_the_local_hf_cache(model_dir, tmp_path, monkeypatch):
    """A repo id resolves offline from the HF cache, as mlx-lm resolves it."""
    import huggingface_hub.constants as hf_constants

    snapshot = tmp_path / "hub" / "models--tiny--moe" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, data in _files(model_dir("qwen2_moe")).items():
        (snapshot / name).write_bytes(data)
    (tmp_path / "hub" / "models--tiny--moe" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--moe" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    store = pack("tiny/moe", tmp_path / "s", progress=False)
    with StoreReader(store) as r:
        assert r.index.metadata["source"] == "tiny/moe"
        assert r.index.metadata["model_type"] == "qwen2_moe"

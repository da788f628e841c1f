"""mlxstore.load: a Mapping that reads a tensor only when it is looked up."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from conftest import flip_byte
from store_cases import raw_bytes, sample, write_store

import mlxstore


@pytest.fixture()
def path(tmp_path):
    tensors = {
        "embed": ("bfloat16", sample("bfloat16", (64, 32))),
        "norm": ("float32", sample("float32", (32,))),
        "scalar": ("int64", np.array(7, np.int64)),
        "empty": ("float16", np.zeros((0, 4), np.float16)),
        "packed": ("float32", np.arange(3000, dtype=np.float32)),
    }
    groups = {"moe": [("moe.w", "uint32", sample("uint32", (4, 8, 2))), ("moe.s", "float16", sample("float16", (4, 8)))]}
    return write_store(tmp_path / "lazy", tensors, groups=groups, compress={"packed"}), tensors, groups


def test_lookup_reads_only_that_tensor(path):
    p, tensors, _ = path
    with mlxstore.load(p) as t:
        assert isinstance(t, Mapping)
        assert list(t) == list(tensors) + ["moe.w", "moe.s"] and len(t) == 7
        assert "norm" in t and "nope" not in t and 3 not in t
        assert t.residency.resident == [] and t.stats.misses == 0  # none of that read anything
        assert raw_bytes(t["norm"]) == raw_bytes(tensors["norm"][1])
        assert t.residency.resident == ["norm"]
        t["norm"]
        assert (t.stats.hits, t.stats.misses) == (1, 1)
        assert t.get("nope") is None
        with pytest.raises(KeyError):
            t["nope"]


def test_dict_materializes_everything(path):
    p, tensors, groups = path
    with mlxstore.load(p) as t:
        everything = dict(t)
        assert t.stats.misses == 7 and len(t.residency.resident) == 7
    expected = {n: a for n, (_, a) in tensors.items()} | {n: a for n, _, a in groups["moe"]}
    assert everything.keys() == expected.keys()
    for name, src in expected.items():
        assert raw_bytes(everything[name]) == raw_bytes(src), name
        assert tuple(everything[name].shape) == src.shape


def test_budget_and_pin(path):
    p, tensors, _ = path
    with mlxstore.load(p, budget="5KiB", pin=["norm"]) as t:
        assert t.residency.resident == ["norm"]  # pinned at load
        assert t.stats.pinned_bytes == 128
        for name in t:
            t[name]
        # packed (12000 B, over the budget alone) pushed out everything unpinned, then went
        assert t.residency.resident == ["norm", "moe.w", "moe.s"]
        assert t.stats.bytes_materialized == 128 + 256 + 64
        assert t.stats.evictions == 4  # embed, scalar, empty, packed
        assert t.store.tensor_names == list(t)


def test_check_names_damaged_tensor(path):
    p, _, _ = path
    with mlxstore.open(p) as s:
        piece = s.tensor("moe.s").pieces[3]
    flip_byte(p / "model.mlxs", piece.offset)
    with mlxstore.load(p, check=True) as t:
        t["norm"]
        with pytest.raises(mlxstore.ChecksumError, match=r"'moe.s' expert 3"):
            t["moe.s"]
    with mlxstore.load(p) as t:
        t["moe.s"]  # unchecked by default


def test_bad_pin_closes_the_store(path, monkeypatch):
    p, _, _ = path
    opened = []
    real = mlxstore.lazy.Store

    def spy(*a, **k):
        opened.append(real(*a, **k))
        return opened[-1]

    monkeypatch.setattr(mlxstore.lazy, "Store", spy)
    with pytest.raises(KeyError, match="nope"):
        mlxstore.load(p, pin=["nope"])
    assert opened[0].closed


def test_package_exports():
    for name in ("open", "load", "parse_size", "StoreError", "ChecksumError"):
        assert name in mlxstore.__all__ and hasattr(mlxstore, name)
    assert issubclass(mlxstore.ChecksumError, mlxstore.StoreError)

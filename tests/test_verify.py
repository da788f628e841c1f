"""Damaged stores: verify names every damaged tensor, expert or file (exit 1); a store that
cannot be opened (wrong magic, truncated header, corrupt index, out-of-range offsets) is
refused with a clear message (exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import flip_byte

from mlxstore.cli.main import main
from mlxstore.formats import StoreError, StoreReader
from mlxstore.formats.layout import PREAMBLE_SIZE, Preamble, parse_preamble, xxh3
from mlxstore.info import store_info


@pytest.fixture
def store(store_dir, tmp_path):
    """A private copy of a packed MoE store, free to damage."""
    return shutil.copytree(store_dir("qwen3_moe"), tmp_path / "store")


def _verify(path):
    return CliRunner().invoke(main, ["verify", "-q", str(path)])


def _rewrite_index(primary, edit) -> None:
    """Apply `edit` to the parsed index, then fix lengths and checksums so only the edit is wrong."""
    raw = primary.read_bytes()
    pre = parse_preamble(raw[:PREAMBLE_SIZE], "test")
    index = json.loads(raw[pre.index_offset:])
    edit(index)
    text = json.dumps(index, separators=(",", ":")).encode()
    size = pre.index_offset + len(text)
    new = Preamble(0, pre.shard_count, pre.alignment, pre.index_offset, len(text), xxh3(text), size)
    primary.write_bytes(new.pack() + raw[PREAMBLE_SIZE:pre.index_offset] + text)


def test_intact_store_verifies(store):
    r = _verify(store)
    assert r.exit_code == 0, r.output
    assert "all checksums match" in r.output


def test_flipped_dense_byte_names_the_tensor(store):
    info = store_info(store)
    name = "model.layers.1.self_attn.o_proj.weight"
    x = info["tensors"][name]["extents"][0]
    flip_byte(store / x["file"], x["offset"] + x["length"] // 2, 0x01)
    r = _verify(store)
    assert r.exit_code == 1
    assert f"damaged: tensor '{name}'" in r.output
    assert r.output.count("damaged:") == 1


def test_flipped_expert_byte_names_tensor_and_expert(store):
    info = store_info(store)
    name = "model.layers.0.mlp.switch_mlp.down_proj.scales"
    x = info["tensors"][name]["extents"][5]
    flip_byte(store / x["file"], x["offset"], 0x01)
    r = _verify(store)
    assert r.exit_code == 1
    assert f"damaged: tensor '{name}' expert 5" in r.output
    assert r.output.count("damaged:") == 1


def test_every_damaged_item_is_named(store):
    info = store_info(store)
    a = info["tensors"]["model.norm.weight"]["extents"][0]
    b = info["tensors"]["model.layers.1.mlp.switch_mlp.gate_proj.weight"]["extents"][15]
    c = info["files"]["tokenizer.json"]
    for x in (a, b, c):
        flip_byte(store / x["file"], x["offset"] + 1, 0x01)
    r = _verify(store)
    assert r.exit_code == 1
    assert "damaged: tensor 'model.norm.weight'" in r.output
    assert "damaged: tensor 'model.layers.1.mlp.switch_mlp.gate_proj.weight' expert 15" in r.output
    assert "damaged: file 'tokenizer.json'" in r.output
    assert r.output.count("damaged:") == 3


def _refused(store, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        StoreReader(store)
    r = _verify(store)
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert r.output.startswith("Error: ")
    info = CliRunner().invoke(main, ["info", str(store)])
    assert info.exit_code == 1 and "Traceback" not in info.output


def test_wrong_magic(store):
    flip_byte(store / "model.mlxs", 0, 0x01)
    _refused(store, "wrong magic")


def test_truncated_header(store):
    data = (store / "model.mlxs").read_bytes()
    (store / "model.mlxs").write_bytes(data[:40])
    _refused(store, "too short for a store preamble")


def test_truncated_file(store):
    data = (store / "model.mlxs").read_bytes()
    (store / "model.mlxs").write_bytes(data[:-100])
    _refused(store, "truncated")


def test_damaged_preamble(store):
    flip_byte(store / "model.mlxs", 20, 0x01)  # the alignment field
    _refused(store, "preamble checksum mismatch")


def test_corrupt_index(store):
    raw = (store / "model.mlxs").read_bytes()
    pre = parse_preamble(raw[:PREAMBLE_SIZE], "test")
    flip_byte(store / "model.mlxs", pre.index_offset + pre.index_length // 2, 0x01)
    _refused(store, "index checksum mismatch")


def test_index_that_is_not_json_even_with_a_valid_checksum(store):
    primary = store / "model.mlxs"
    raw = primary.read_bytes()
    pre = parse_preamble(raw[:PREAMBLE_SIZE], "test")
    text = b"{" + raw[pre.index_offset + 1 : pre.index_offset + pre.index_length - 1]  # drop the final }
    new = Preamble(0, 1, pre.alignment, pre.index_offset, len(text), xxh3(text), pre.index_offset + len(text))
    primary.write_bytes(new.pack() + raw[PREAMBLE_SIZE : pre.index_offset] + text)
    _refused(store, "index: not valid JSON")


def test_out_of_range_offset(store):
    name = "model.layers.0.self_attn.q_proj.weight"

    def edit(index):
        index["tensors"][name]["pieces"][0]["offset"] = 1 << 40

    _rewrite_index(store / "model.mlxs", edit)
    _refused(store, f"tensor '{name}' piece 0 bytes .* lie outside the data")


def test_out_of_range_expert_extent(store):
    prefix = "model.layers.1.mlp.switch_mlp"

    def edit(index):
        index["expert_groups"][prefix]["extents"][3]["length"] = 1 << 40

    _rewrite_index(store / "model.mlxs", edit)
    _refused(store, f"expert group '{prefix}' extent 3 bytes .* lie outside the data")


def test_missing_store(tmp_path):
    r = _verify(tmp_path / "nothing")
    assert r.exit_code == 2 and "no such store" in r.output

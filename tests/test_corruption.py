"""One flipped byte anywhere in the data of a packed model: `mlxstore verify` names exactly
the damaged tensor, expert or file, and every loader with checking on refuses it with the
same name (mlxstore.load, load_model, moe.load)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import flip_byte
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlxstore
from mlxstore import moe
from mlxstore.cli.main import main
from mlxstore.formats import ChecksumError, StoreReader
from mlxstore.pack import pack


@pytest.fixture(scope="module")
def stores(tmp_path_factory, store_dir, model_dir) -> dict[str, Path]:
    """Private copies, free to damage: one file, and a store in 64 KiB shards."""
    root = tmp_path_factory.mktemp("corrupt")
    single = shutil.copytree(store_dir("qwen3_moe"), root / "single")
    sharded = pack(model_dir("mixtral"), root / "sharded", alignment=4096, max_shard_bytes=64 << 10, progress=False)
    return {"single": single, "sharded": sharded}


def _items(store: Path) -> list[tuple[str, str | None, int | None, str, int, int]]:
    """(what, tensor, expert, file, offset, length) of every data piece and embedded file."""
    out = []
    with StoreReader(store) as r:
        index = r.index
        for name, t in index.tensors.items():
            for e, p in enumerate(t.pieces):
                what = f"tensor {name!r} expert {e}" if t.expert_group else f"tensor {name!r}"
                out.append((what, name, e if t.expert_group else None, index.shards[p.shard].name, p.offset, p.length))
        for name, p in index.files.items():
            out.append((f"file {name!r}", None, None, index.shards[p.shard].name, p.offset, p.length))
    return [x for x in out if x[-1]]


def _refused(call, what: str) -> None:
    with pytest.raises(ChecksumError) as info:
        call()
    assert info.value.names == [what]
    assert what in str(info.value)


def _banks(model) -> dict:
    return {m.bank.name: m.bank for _, m in model.named_modules() if hasattr(m, "bank")}


def _check_named_everywhere(store: Path, what: str, tensor: str | None, expert: int | None,
                            fill: str = "direct") -> None:  # fmt: skip
    r = CliRunner().invoke(main, ["verify", "-q", str(store)])
    assert r.exit_code == 1, r.output
    assert [line for line in r.output.splitlines() if line.startswith("damaged:")] == [f"damaged: {what}"]
    if tensor is not None:
        with mlxstore.load(store, check=True) as lazy:
            _refused(lambda: lazy[tensor], what)
    _refused(lambda: mlxstore.load_model(store, check=True), what)
    if expert is None:  # dense weights and the tokenizer are read by moe.load itself
        _refused(lambda: moe.load(store, slots_per_layer=2, check=True), what)
        return
    model, _ = moe.load(store, slots_per_layer=2, check=True, fill=fill)
    group = mlxstore.open(store).tensor(tensor).expert_group
    bank = _banks(model)[group]
    _refused(lambda: bank.ensure([expert]), what)
    assert expert not in bank.policy.resident()  # the damaged read left no slot behind
    other = (expert + 1) % bank.num_experts
    bank.ensure([other])  # the bank still works for intact experts


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(data=st.data())
def test_one_flipped_byte_is_named_by_verify_and_every_loader(stores, data):
    store = stores[data.draw(st.sampled_from(sorted(stores)), label="store")]
    what, tensor, expert, file, offset, length = data.draw(st.sampled_from(_items(store)), label="item")
    at = offset + data.draw(st.integers(0, length - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="mask")
    flip_byte(store / file, at, mask)
    try:
        _check_named_everywhere(store, what, tensor, expert)
    finally:
        flip_byte(store / file, at, mask)


@pytest.mark.parametrize("fill", ["direct", "staged"])
@pytest.mark.parametrize("where", ["first", "last"])
def test_first_and_last_byte_of_an_expert(stores, where, fill):
    store = stores["single"]
    items = [x for x in _items(store) if x[2] is not None]
    what, tensor, expert, file, offset, length = items[len(items) // 2]
    at = offset if where == "first" else offset + length - 1
    flip_byte(store / file, at, 0x80)
    try:
        _check_named_everywhere(store, what, tensor, expert, fill)
    finally:
        flip_byte(store / file, at, 0x80)


def test_intact_stores_verify(stores):
    for store in stores.values():
        r = CliRunner().invoke(main, ["verify", "-q", str(store)])
        assert r.exit_code == 0, r.output

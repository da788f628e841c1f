"""Hostile stores end in StoreError naming the problem: no other exception, no hang, no file
opened outside the store, no allocation from an unvalidated size (bench.harness.hostile)."""

from __future__ import annotations

import copy
import subprocess
import sys
import tracemalloc

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, given, settings

import mlxstore
from bench.harness.hostile import FIFO, Case, bases, cases, reseal, with_index, with_text
from bench.harness.hostile_run import GOOD, CaseRunner, exercise, recording_opens
from mlxstore.formats import StoreError
from mlxstore.formats.layout import PREAMBLE_SIZE

FUZZ_CASES = 2500


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    with CaseRunner(tmp_path_factory.mktemp("hostile"), seconds=10.0) as r:  # cases take ~1 ms
        yield r


def _base(name: str):
    return next(b for b in bases() if b.name == name)


@settings(max_examples=FUZZ_CASES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(case=cases())
def test_hostile_stores_are_refused_by_name(runner, case):
    outcome = runner.run(case)
    assert outcome.result == GOOD, outcome


def test_valid_bases_open_and_read(runner):
    """The fuzzer's starting points are valid: only the damage makes a case fail."""
    for base in bases():
        outcome = runner.run(Case("valid", dict(base.files), ()))
        assert outcome.result == "accepted", outcome


def test_index_claiming_2_60_bytes_allocates_nothing(runner):
    base = _base("dense")
    files = {**base.files, "model.mlxs": reseal(base.files["model.mlxs"], index_length=1 << 60)}
    outcome = runner.run(Case("huge-index", files, ("index length",)))
    assert outcome.result == GOOD, outcome
    assert outcome.python_peak < 64 << 10 and outcome.mlx_peak < 64 << 10


@pytest.mark.parametrize("shape", [[1 << 20, 1 << 20, 1 << 10], [1 << 30, 1 << 30], [2**31 - 1] * 3, [0, 1 << 40]])
@pytest.mark.parametrize("tensor", ["embed.weight", "packed", "layers.0.mlp.switch.gate.weight"])
def test_absurd_shapes_allocate_nothing(runner, tensor, shape):
    base = _base("experts")
    idx = copy.deepcopy(base.index)
    idx["tensors"][tensor]["shape"] = shape
    outcome = runner.run(Case("absurd-shape", with_index(base, idx), (tensor,)))
    assert outcome.result == GOOD, outcome
    assert outcome.python_peak < 256 << 10 and outcome.mlx_peak < 64 << 10


def test_zstd_frame_must_declare_the_tensor_size_before_allocation(runner):
    """A claim within what the frame could hold passes the parser; the frame header refuses it."""
    base = _base("experts")
    idx = copy.deepcopy(base.index)
    idx["tensors"]["packed"]["shape"] = [256, 256]  # 256 KiB: a 19-byte frame could hold it; it says 4 KiB
    outcome = runner.run(Case("zstd-claim", with_index(base, idx), ("zstd frame declares",)))
    assert outcome.result == GOOD, outcome
    assert outcome.mlx_peak < 1 << 20


def test_no_path_outside_the_store_is_opened(tmp_path):
    """Shard names with `..` or `/` are refused before any open, even with decoys present."""
    base = _base("sharded")
    store = tmp_path / "store"
    store.mkdir()
    for name, data in base.files.items():
        (store / name).write_bytes(data)
        (tmp_path / name).write_bytes(data)  # a valid decoy one `..` away
    for bad in ("../model-00001.mlxs", str(tmp_path / "model-00001.mlxs"), "sub/model-00001.mlxs"):
        idx = copy.deepcopy(base.index)
        idx["shards"][1]["name"] = bad
        for name, data in with_index(base, idx).items():
            (store / name).write_bytes(data)
        seen: list[str] = []
        with recording_opens(seen), pytest.raises(StoreError, match="not a plain file name"):
            exercise(store)
        assert seen == [str(store / "model.mlxs")]


def test_fifo_store_file_does_not_hang(runner):
    for name in ("model.mlxs", "model-00002.mlxs"):
        outcome = runner.run(Case("fifo", {**_base("sharded").files, name: FIFO}, ("not a regular file",)))
        assert outcome.result == GOOD and outcome.seconds < 1, outcome


def test_file_name_with_trailing_newline_is_refused(runner):
    base = _base("dense")
    idx = copy.deepcopy(base.index)
    idx["files"]["tokenizer.json\n"] = idx["files"].pop("tokenizer.json")
    outcome = runner.run(Case("newline", with_index(base, idx), ("not a plain file name",)))
    assert outcome.result == GOOD, outcome


def test_unequal_expert_pieces_are_refused(runner):
    """Pieces whose lengths sum right but are not one expert's slice each would be read
    misaligned (the bank sizes slots by the shape): the parser refuses them."""
    base = _base("sharded")
    idx = copy.deepcopy(base.index)
    pieces = idx["tensors"]["g.x"]["pieces"]
    pieces[0]["length"] -= 2
    pieces[1]["length"] += 2
    outcome = runner.run(Case("unequal", with_index(base, idx), ("not 200 bytes",)))
    assert outcome.result == GOOD, outcome


def test_deep_nesting_with_a_raised_recursion_limit_does_not_crash(tmp_path):
    """Python's C JSON parser recurses per level; the reader checks depth first, so an
    application that raised the recursion limit gets StoreError, not SIGSEGV."""
    base = _base("dense")
    depth = 500_000
    for name, data in with_text(base, b"[" * depth + b"]" * depth).items():
        (tmp_path / name).write_bytes(data)
    code = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "import mlxstore\n"
        f"try:\n    mlxstore.open({str(tmp_path)!r})\n"
        "except mlxstore.StoreError as e:\n    print('refused:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "refused: index: nested too deeply" in r.stdout


def test_open_of_valid_store_is_bounded_by_its_size(tmp_path):
    """Opening validates the index without touching tensor data: Python memory stays a small
    multiple of the index, MLX memory zero."""
    base = _base("experts")
    for name, data in base.files.items():
        (tmp_path / name).write_bytes(data)
    mx.reset_peak_memory()
    tracemalloc.start()
    try:
        with mlxstore.open(tmp_path):
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * base.preamble.index_length + (256 << 10)
    assert base.preamble.index_length < len(base.files["model.mlxs"]) - PREAMBLE_SIZE


def test_deep_embedded_json_is_refused_before_mlx_lm_parses_it(tmp_path):
    """mlx-lm and transformers json.load the tokenizer files: a deep one is refused first
    (StoreError, also with a raised recursion limit that would let json.load crash)."""
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir

    src = make_model_dir("llama", tmp_path / "src")
    (src / "tokenizer_config.json").write_text('{"a":' * 300_000 + "0" + "}" * 300_000)
    store = pack(src, tmp_path / "store", progress=False)
    code = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "import mlxstore\n"
        f"try:\n    mlxstore.load_model({str(store)!r})\n"
        "except mlxstore.StoreError as e:\n    print('refused:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "'tokenizer_config.json' nests deeper than 64 levels" in r.stdout, r.stdout

"""A store without a tokenizer: pack warns (or not, on purpose), generate says what is missing."""

from __future__ import annotations

import shutil
import warnings

import pytest
from click.testing import CliRunner

from mlxstore.cli.main import main
from mlxstore.formats import StoreReader
from mlxstore.pack import PackWarning, pack


@pytest.fixture
def bare(model_dir, tmp_path):
    """A model directory without its tokenizer files."""
    src = shutil.copytree(model_dir("qwen3_moe"), tmp_path / "bare")
    for p in src.glob("tokenizer*"):
        p.unlink()
    return src


def _no_pack_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PackWarning)
        return fn()


def test_pack_warns_naming_what_is_missing(bare, tmp_path):
    with pytest.warns(PackWarning, match=r"bare has no tokenizer files \(looked for tokenizer\.json, "
                                         r"tokenizer_config\.json, tokenizer\.model, vocab\.json\)"):
        store = pack(bare, tmp_path / "s", progress=False)
    with StoreReader(store) as r:
        assert r.index.files and not any(n.startswith("tokenizer") for n in r.index.files)


def test_a_model_with_a_tokenizer_packs_without_warning(model_dir, tmp_path):
    store = _no_pack_warnings(lambda: pack(model_dir("qwen3_moe"), tmp_path / "s", progress=False))
    with StoreReader(store) as r:
        assert "tokenizer.json" in r.index.files and "tokenizer" not in r.index.metadata


def test_cli_warning_and_no_tokenizer_flag(bare, model_dir, tmp_path):
    r = CliRunner().invoke(main, ["pack", "-q", str(bare), str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "Warning: " in r.output and "has no tokenizer files" in r.output and "--no-tokenizer" in r.output
    r = CliRunner().invoke(main, ["pack", "-q", "--no-tokenizer", str(bare), str(tmp_path / "b")])
    assert r.exit_code == 0 and "Warning" not in r.output, r.output
    # deliberate on a model that has one: the tokenizer files are left out
    r = CliRunner().invoke(main, ["pack", "-q", "--no-tokenizer", str(model_dir("qwen3_moe")), str(tmp_path / "c")])
    assert r.exit_code == 0 and "Warning" not in r.output, r.output
    with StoreReader(tmp_path / "c") as s:
        assert "config.json" in s.index.files and not any(n.startswith("tokenizer") for n in s.index.files)
        assert s.index.metadata["tokenizer"] == "none"


@pytest.mark.parametrize(("flags", "why"), [([], "its source had none"),
                                            (["--no-tokenizer"], "it was packed with --no-tokenizer")])
def test_generate_says_what_is_missing(bare, tmp_path, flags, why):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PackWarning)
        pack(bare, tmp_path / "s", progress=False, tokenizer=not flags)
    r = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "s"), "-p", "hi", "-m", "2"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert error == [f"Error: {tmp_path / 's'} has no tokenizer ({why}): repack it from a model directory "
                     "with tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json)"]

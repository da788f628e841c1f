"""Bad sources and destinations: a StoreError naming the problem, nothing at DST."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from mlxstore.cli.main import main
from mlxstore.formats import StoreError
from mlxstore.pack import pack


@pytest.fixture
def src(model_dir, tmp_path):
    """A private copy of a small source, free to break."""
    return shutil.copytree(model_dir("qwen3_moe"), tmp_path / "src")


def _refused(src, out, match: str) -> None:
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(StoreError, match=match):
        pack(src, out / "dst", progress=False)
    assert not (out / "dst").exists()
    assert sorted(p.name for p in out.iterdir()) == before  # no partial directory either


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_missing_src(tmp_path, out):
    _refused(tmp_path / "nope", out, "no such model directory")


def test_src_is_a_file(src, out):
    _refused(src / "config.json", out, "not a model directory")


def test_repo_id_not_in_cache(out, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _refused("nobody/no-such-model", out, "not a model in the local Hugging Face cache")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable directories")
def test_unreadable_src_dir(src, out):
    src.chmod(0)
    try:
        _refused(src, out, "not readable")
    finally:
        src.chmod(0o755)


def test_unreadable_config(src, out):
    (src / "config.json").unlink()
    (src / "config.json").mkdir()  # exists, cannot be read as a file (works as root too)
    _refused(src, out, "config.json: cannot read")


def test_no_config(src, out):
    (src / "config.json").unlink()
    _refused(src, out, "no config.json")


def test_config_not_json(src, out):
    (src / "config.json").write_text("{not json")
    _refused(src, out, "not valid JSON")


def test_unknown_architecture(src, out):
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "no_such_arch"
    (src / "config.json").write_text(json.dumps(config))
    _refused(src, out, "unknown architecture 'no_such_arch'")


def test_no_weights(src, out):
    (src / "model.safetensors").unlink()
    _refused(src, out, "no weights")


def test_corrupt_weights(src, out):
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    _refused(src, out, "model.safetensors: not a safetensors file")


def test_truncated_weights(src, out):
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(src, out, r"model.safetensors: truncated \(\d+ bytes, its header describes \d+\)")


def test_weights_of_another_shape(src, out, model_dir):
    shutil.copy(model_dir("mixtral") / "model.safetensors", src / "model.safetensors")
    _refused(src, out, "mlx-lm cannot load this model")


def test_dst_exists(src, out):
    (out / "dst").mkdir()
    (out / "dst" / "keep").write_text("mine")
    with pytest.raises(StoreError, match="already exists"):
        pack(src, out / "dst", progress=False)
    assert [p.name for p in (out / "dst").iterdir()] == ["keep"]
    assert sorted(p.name for p in out.iterdir()) == ["dst"]


def test_dst_is_src(src):
    with pytest.raises(StoreError, match="replace its own source"):
        pack(src, src, overwrite=True, progress=False)
    with pytest.raises(StoreError, match="replace its own source"):
        pack(src, src.parent, overwrite=True, progress=False)
    assert (src / "model.safetensors").exists()


def test_cli_reports_errors_without_traceback(tmp_path, src):
    r = CliRunner().invoke(main, ["pack", str(tmp_path / "nope"), str(tmp_path / "dst")])
    assert r.exit_code == 1 and "no such model directory" in r.output and "Traceback" not in r.output
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["pack", "-q", str(src), str(tmp_path / "dst")])
    assert r.exit_code == 1 and "already exists" in r.output
    r = CliRunner().invoke(main, ["pack", "-q", "--alignment", "1000", str(src), str(tmp_path / "d2")])
    assert r.exit_code == 1 and "alignment" in r.output and not (tmp_path / "d2").exists()
    r = CliRunner().invoke(main, ["pack", "--max-shard-size", "lots", str(src), str(tmp_path / "d3")])
    assert r.exit_code == 2 and "not a number" in r.output

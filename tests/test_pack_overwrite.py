"""`--overwrite` replaces a store and nothing else: user files are never deleted."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from mlxstore.cli.main import main
from mlxstore.formats import StoreError, StoreReader, StoreWriter


def _write(dst, value: float = 1.0, overwrite: bool = False):
    w = StoreWriter(dst, overwrite=overwrite)
    w.add_tensor("x", "float32", [4], np.full(4, value, np.float32))
    return w.finish()


def _value(dst) -> float:
    with StoreReader(dst) as r:
        return float(np.frombuffer(r.tensor_bytes(r.index.tensors["x"]), np.float32)[0])


def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_unrelated_directory_survives_overwrite(tmp_path):
    dst = tmp_path / "photos"
    (dst / "2024").mkdir(parents=True)
    (dst / "a.jpg").write_bytes(b"\xff\xd8 jpeg")
    (dst / "2024" / "b.jpg").write_bytes(b"more")
    before = _tree(dst)
    with pytest.raises(StoreError, match=r"photos is not an mlxstore store .* holds 2024, a\.jpg; refusing"):
        _write(dst, overwrite=True)
    assert _tree(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no partial left behind


def test_a_file_at_the_destination_is_refused(tmp_path):
    dst = tmp_path / "thesis.pdf"
    dst.write_bytes(b"%PDF precious")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match=r"thesis\.pdf is a file \(13 bytes\), not an mlxstore store"):
            _write(dst, overwrite=overwrite)
    assert dst.read_bytes() == b"%PDF precious"


def test_a_link_at_the_destination_is_refused(tmp_path):
    target = tmp_path / "real"
    _write(target)
    os.symlink(target, tmp_path / "link")
    with pytest.raises(StoreError, match="is a symbolic link"):
        _write(tmp_path / "link", 2.0, overwrite=True)
    assert _value(target) == 1.0 and (tmp_path / "link").is_symlink()


def test_an_empty_directory_is_used(tmp_path):
    for overwrite in (False, True):
        dst = tmp_path / f"empty-{overwrite}"
        dst.mkdir()
        _write(dst, 3.0, overwrite=overwrite)
        assert _value(dst) == 3.0


def test_a_store_is_replaced(tmp_path):
    dst = _write(tmp_path / "s", 1.0)
    with pytest.raises(StoreError, match="already exists"):
        _write(dst, 2.0)
    _write(dst, 2.0, overwrite=True)
    assert _value(dst) == 2.0 and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_store_with_user_files_is_refused_whole(tmp_path):
    """Safe choice: refuse, rather than delete the store and keep the rest or guess."""
    dst = _write(tmp_path / "s", 1.0)
    (dst / "notes.txt").write_text("my notes")
    with pytest.raises(StoreError, match=r"is a store but also holds notes\.txt, which is not part of it"):
        _write(dst, 2.0, overwrite=True)
    assert _value(dst) == 1.0 and (dst / "notes.txt").read_text() == "my notes"


def test_a_damaged_store_is_refused(tmp_path):
    dst = _write(tmp_path / "s", 1.0)
    primary = next(dst.iterdir())
    primary.write_bytes(primary.read_bytes()[:-10])
    with pytest.raises(StoreError, match="is not an mlxstore store .*truncated"):
        _write(dst, 2.0, overwrite=True)
    assert primary.exists()


def test_destination_changed_while_writing(tmp_path):
    """A file dropped into the old store during the write is noticed before anything is removed."""
    dst = _write(tmp_path / "s", 1.0)
    w = StoreWriter(dst, overwrite=True)
    w.add_tensor("x", "float32", [4], np.full(4, 2.0, np.float32))
    (dst / "late.txt").write_text("arrived meanwhile")
    with pytest.raises(StoreError, match="late.txt"):
        w.finish()
    w.abort()
    assert _value(dst) == 1.0 and (dst / "late.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_cli_pack_overwrite_keeps_an_unrelated_directory(model_dir, tmp_path):
    dst = tmp_path / "work"
    dst.mkdir()
    (dst / "report.docx").write_bytes(b"draft")
    r = CliRunner().invoke(main, ["pack", "-q", "--overwrite", str(model_dir("qwen3_moe")), str(dst)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "work is not an mlxstore store" in r.output and "report.docx" in r.output
    assert _tree(dst) == {"report.docx": b"draft"}
    r = CliRunner().invoke(main, ["pack", "-q", "--overwrite", str(model_dir("qwen3_moe")), str(tmp_path / "st")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["pack", "-q", "--overwrite", str(model_dir("llama")), str(tmp_path / "st")])
    assert r.exit_code == 0, r.output
    with StoreReader(tmp_path / "st") as s:
        assert s.index.metadata["model_type"] == "llama"

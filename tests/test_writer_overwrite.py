"""An overwrite interrupted between its two renames loses nothing."""

import os

import numpy as np

from mlxstore.formats import StoreReader, StoreWriter


def _write(dst, value, overwrite=False):
    w = StoreWriter(dst, overwrite=overwrite)
    w.add_tensor("x", "float32", [4], np.full(4, value, np.float32))
    return w


def test_old_store_restored_after_crash_between_renames(tmp_path):
    dst = tmp_path / "s"
    _write(dst, 1.0).finish()
    dead_pid = 2**22 + 12345  # beyond pid_max on Linux: no such process
    os.rename(dst, tmp_path / f".s.mlxstore-old-{dead_pid}")  # what a crash leaves
    assert not dst.exists()
    w = _write(dst, 2.0, overwrite=True)  # the next writer restores, then replaces
    w.finish()
    with StoreReader(dst) as r:
        assert np.frombuffer(r.tensor_bytes(r.index.tensors["x"]), np.float32)[0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_restored_without_new_write(tmp_path):
    dst = tmp_path / "s"
    _write(dst, 1.0).finish()
    os.rename(dst, tmp_path / ".s.mlxstore-old-4206001")
    w = StoreWriter(tmp_path / "s", overwrite=True)
    w.abort()
    with StoreReader(dst) as r:
        assert np.frombuffer(r.tensor_bytes(r.index.tensors["x"]), np.float32)[0] == 1.0

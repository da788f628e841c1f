"""StoreWriter publishes only complete stores its own reader accepts."""

from __future__ import annotations

import numpy as np
import pytest

from mlxstore.formats import StoreError, StoreReader, StoreWriter


def _one_tensor(w: StoreWriter) -> None:
    w.add_tensor("a", "float32", (3,), np.arange(3, dtype=np.float32))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("config", {"rope": float("nan")}, "strict JSON"),
        ("config", {"x": object()}, "strict JSON"),
        ("metadata", {"layers": 3}, "metadata 'layers' is int"),
        ("quantization", {"lm_head": {"bits": 4}}, "lacks 'group_size'"),
    ],
)
def test_an_index_the_reader_would_refuse_is_never_written(tmp_path, field, value, match):
    with pytest.raises(StoreError, match=match), StoreWriter(tmp_path / "s") as w:
        _one_tensor(w)
        setattr(w.index, field, value)
        w.finish()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_store_and_is_cleaned_up(tmp_path):
    w = StoreWriter(tmp_path / "s")
    _one_tensor(w)  # ... and the writer dies before finish()
    assert not (tmp_path / "s").exists()
    with pytest.raises(StoreError):
        StoreReader(tmp_path / "s")
    with StoreWriter(tmp_path / "s") as w2:
        _one_tensor(w2)
        w2.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the leftover is gone
    w.abort()
    with StoreReader(tmp_path / "s") as r:
        assert r.verify() == []

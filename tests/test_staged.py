"""mlxstore.staged: file bytes to the device in a few loads, the later ones read ahead."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlxstore import osio, staged
from mlxstore.formats import StoreError


def test_group_loads_takes_whole_extents():
    assert staged.group_loads([5, 5, 5], 0) == [3]
    assert staged.group_loads([5, 5, 5], 1) == [1, 1, 1]
    assert staged.group_loads([4, 4, 4, 4, 4], 8) == [2, 2, 1]
    assert staged.group_loads([10, 1, 1], 8) == [1, 2]
    assert staged.group_loads([], 8) == []


@pytest.fixture()
def extents(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data, [(fd, off, n, f"extent {i}") for i, (off, n) in enumerate([(0, 70000), (81920, 5), (200000, 300000)])]
    os.close(fd)


@pytest.mark.parametrize("load_size", [0, 1, 70005, 1 << 30])
def test_loads_hold_the_extents_in_order(extents, load_size):
    _, data, ext = extents
    with ThreadPoolExecutor(4) as pool:
        loads, seconds = staged.read_to_device(ext, pool, 4, 4096, load_size)
    assert [n for _, n in loads] == staged.group_loads([x[2] for x in ext], load_size)
    got = b"".join(np.array(a).tobytes() for a, _ in loads)
    assert got == b"".join(data[off : off + n] for _, off, n, _ in ext)
    assert seconds > 0


def test_later_loads_are_read_ahead_once_the_first_is_queued(extents, monkeypatch):
    """The read-ahead of loads 2.. is asked for after the first load's reads are queued (so
    the disk serves the first load first), once, and never for the first load's extents."""
    _, _, ext = extents
    events = []
    real_read = osio.read_extent_into
    monkeypatch.setattr(osio, "read_extent_into", lambda fd, off, views, what: (events.append(("read", off)),
                                                                                 real_read(fd, off, views, what))[1])  # fmt: skip
    monkeypatch.setattr(osio, "advise_willneed", lambda fd, off, n: events.append(("ahead", off)) or True)
    with ThreadPoolExecutor(1) as pool:  # one thread: the order of submission is the order of events
        staged.read_to_device(ext, pool, 1, 4096, 1)
    aheads = [off for kind, off in events if kind == "ahead"]
    assert aheads == [81920, 200000]
    assert events.index(("read", 0)) < events.index(("ahead", 81920))


def test_a_failed_read_in_a_later_load_raises_naming_it(extents, monkeypatch):
    fd, _, ext = extents
    real = osio.read_extent_into

    def failing(fd_, off, views, what):
        if off >= 200000:
            raise StoreError(f"{what}: Input/output error")
        return real(fd_, off, views, what)

    monkeypatch.setattr(osio, "read_extent_into", failing)
    with ThreadPoolExecutor(2) as pool, pytest.raises(StoreError, match="extent 2: Input/output error"):
        staged.read_to_device(ext, pool, 2, 4096, 1)

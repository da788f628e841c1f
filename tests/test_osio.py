"""osio: scatter reads (preadv and the pread fallback), hints on Linux and (simulated) macOS."""

from __future__ import annotations

import errno
import mmap
import os
import struct
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from mlxstore import osio
from mlxstore.formats import StoreError

DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture()
def fd(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def test_page_size():
    p = osio.page_size()
    assert p == mmap.PAGESIZE and p & (p - 1) == 0 and p >= 4096


@pytest.fixture(params=["preadv", "pread fallback"])
def reader(request, monkeypatch):
    if request.param == "pread fallback":
        monkeypatch.delattr(os, "preadv", raising=False)
    return request.param


def test_scatter_read_fills_buffers_in_order(fd, reader):
    a, b, c = bytearray(5), np.zeros(1000, np.uint8), mx.zeros((7,), mx.uint8)
    mx.eval(c)
    empty = bytearray(0)
    n = osio.read_extent_into(fd, 100, [a, empty, b, memoryview(c)])
    assert n == 1012
    assert bytes(a) == DATA[100:105]
    assert b.tobytes() == DATA[105:1105]
    assert np.asarray(c).tobytes() == DATA[1105:1112]


def test_non_byte_buffers_are_read_as_bytes(fd, reader):
    words = np.zeros(4, np.uint32)
    osio.read_extent_into(fd, 4, [words])
    assert words.tobytes() == DATA[4:20]


def test_short_reads_are_retried(fd, monkeypatch):
    real = os.preadv
    sizes = []

    def stingy(fd_, views, offset):  # at most 3 bytes per call, like a slow pipe or signal
        view = views[0][:3]
        n = real(fd_, [view], offset)
        sizes.append(n)
        return n

    monkeypatch.setattr(os, "preadv", stingy)
    bufs = [bytearray(4), bytearray(9)]
    assert osio.read_extent_into(fd, 1000, bufs) == 13
    assert b"".join(bufs) == DATA[1000:1013]
    assert len(sizes) == 5


def test_end_of_file_raises_naming_offset_and_length(fd, reader):
    buf = bytearray(100)
    with pytest.raises(StoreError, match=r"thing: short read, 50 of 100 bytes at offset 16334"):
        osio.read_extent_into(fd, len(DATA) - 50, [buf], "thing")


def test_io_error_raises_store_error(fd, monkeypatch):
    def failing(*_):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(StoreError, match=r"read of 8 bytes at offset 12 failed after 0 bytes.*Input/output"):
        osio.read_extent_into(fd, 12, [bytearray(8)])


def test_read_only_buffers_are_refused(fd):
    with pytest.raises(ValueError, match="writable"):
        osio.read_extent_into(fd, 0, [b"immutable"])


def test_many_buffers_beyond_iov_max(fd, monkeypatch):
    monkeypatch.setattr(osio, "_iov_max", lambda: 4)
    bufs = [bytearray(3) for _ in range(11)]
    osio.read_extent_into(fd, 7, bufs)
    assert b"".join(bufs) == DATA[7:40]


# ---------------------------------------------------------------- hints, Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux calls")
def test_linux_hints(fd):
    assert osio.advise_willneed(fd, 0, 4096)
    assert osio.advise_dontneed(fd, 0, 0)
    assert osio.advise_random(fd)
    assert not osio.set_nocache(fd, True)  # macOS only
    assert not osio.advise_willneed(fd, 0, -1)


def test_hints_never_raise(tmp_path):
    assert osio.advise_willneed(-1, 0, 10) is False  # bad descriptor: ignored
    assert osio.advise_dontneed(-1, 0, 10) is False


# ---------------------------------------------------------------- hints, macOS (simulated)


@pytest.fixture()
def darwin(monkeypatch):
    """sys.platform says darwin; fcntl calls are recorded instead of made."""
    calls = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(osio.fcntl, "fcntl", lambda fd, cmd, arg=0: calls.append((fd, cmd, arg)) or 0)
    monkeypatch.setattr(os, "posix_fadvise", lambda *a: pytest.fail("posix_fadvise on macOS"), raising=False)
    return calls


def test_macos_willneed_is_rdadvise(darwin):
    assert osio.advise_willneed(3, 16384, 1 << 20)
    assert darwin == [(3, 44, struct.pack("=qi4x", 16384, 1 << 20))]
    assert len(darwin[0][2]) >= 12  # off_t then int: 12 bytes packed(4), 16 naturally aligned


def test_macos_willneed_splits_ranges_over_int_max(darwin):
    osio.advise_willneed(3, 0, 5 << 30)
    counts = [struct.unpack("=qi4x", arg) for _, _, arg in darwin]
    assert [c for _, c in counts] == [2**31 - 1, 2**31 - 1, (5 << 30) - 2 * (2**31 - 1)]
    assert [o for o, _ in counts] == [0, 2**31 - 1, 2 * (2**31 - 1)]


def test_macos_other_calls(darwin):
    assert not osio.advise_dontneed(3, 0, 100)  # no macOS equivalent
    assert osio.set_nocache(3, True) and osio.set_nocache(3, False)
    assert osio.advise_random(3)
    assert darwin == [(3, 48, 1), (3, 48, 0), (3, 45, 0)]


def test_macos_failing_fcntl_is_ignored(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")

    def bad(*_):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(osio.fcntl, "fcntl", bad)
    assert osio.advise_willneed(3, 0, 10) is False
    assert osio.set_nocache(3, True) is False


# ---------------------------------------------------------------- madvise


def test_page_span_rounds_out_and_clips():
    p = osio.page_size()
    assert osio.page_span(1, 10, 10 * p) == (0, p)
    assert osio.page_span(p + 5, p, 10 * p) == (p, 2 * p)
    assert osio.page_span(2 * p, p, 10 * p) == (2 * p, p)
    assert osio.page_span(9 * p + 1, 5 * p, 10 * p) == (9 * p, p)
    assert osio.page_span(20 * p, 5, 10 * p)[1] == 0


class FakeMap:
    closed = False

    def __init__(self, size):
        self.size, self.calls = size, []

    def __len__(self):
        return self.size

    def madvise(self, flag, start, length):
        self.calls.append((flag, start, length))


def test_madvise_passes_whole_pages():
    p = osio.page_size()
    fake = FakeMap(4 * p)
    assert osio.madvise(fake, p + 3, 10, "willneed")
    assert osio.madvise(fake, 0, 4 * p + 100, "random")
    assert not osio.madvise(fake, 8 * p, 10, "dontneed")  # outside the mapping
    assert fake.calls == [(mmap.MADV_WILLNEED, p, p), (mmap.MADV_RANDOM, 0, 4 * p)]
    with pytest.raises(ValueError, match="unknown madvise"):
        osio.madvise(fake, 0, 1, "please")


def test_madvise_on_real_and_closed_mappings(fd):
    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    for advice in ("willneed", "random", "sequential", "normal", "dontneed"):
        assert osio.madvise(mm, 5, 100, advice) == hasattr(mmap, "MADV_" + advice.upper())
    mm.close()
    assert osio.madvise(mm, 0, 10, "willneed") is False


def test_madvise_missing_on_platform(monkeypatch):
    monkeypatch.delattr(mmap, "MADV_WILLNEED", raising=False)
    assert osio.madvise(FakeMap(1 << 20), 0, 10, "willneed") is False


def test_split_reads_covers_the_range_in_order():
    from mlxstore.osio import split_reads

    buffers = [bytearray(10), bytearray(1000), bytearray(5)]
    parts = split_reads(100, buffers, 4, 100)
    assert 1 < len(parts) <= 4
    assert [off for off, _ in parts] == sorted(off for off, _ in parts) and parts[0][0] == 100
    for (off, views), nxt in zip(parts, parts[1:] + [(100 + 1015, [])]):
        assert off + sum(v.nbytes for v in views) == nxt[0]  # contiguous, no gap, no overlap
    assert split_reads(0, buffers, 16, 1 << 20) == [(0, [memoryview(b) for b in buffers])]


def test_willneed_reads_past_one_readahead_window(tmp_path):
    """Linux reads at most one readahead window per WILLNEED call (8 MiB on the dev VM):
    a longer range must still come into the page cache whole."""
    from bench.harness.rawdisk import cached_fraction

    if sys.platform != "linux":
        pytest.skip("Linux page cache")
    path = tmp_path / "big.bin"
    size = 40 << 20
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        osio.advise_dontneed(fd, 0, 0)
        if cached_fraction(path) is None or cached_fraction(path) > 0.05:
            pytest.skip("mincore unavailable or this filesystem keeps pages after DONTNEED")
        osio.advise_random(fd)  # as the banks' descriptors are
        want = 32 << 20
        assert osio.advise_willneed(fd, 0, want)
        for _ in range(100):  # the reads are asynchronous
            if cached_fraction(path) >= 0.95 * want / size:
                break
            time.sleep(0.05)
        assert cached_fraction(path) >= 0.95 * want / size
    finally:
        os.close(fd)


def test_linux_willneed_asks_in_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(osio, "_darwin", lambda: False)
    monkeypatch.setattr(osio, "_fadvise", lambda fd, off, n, what: calls.append((off, n, what)) or True)
    assert osio.advise_willneed(3, 100, 2 * osio.WILLNEED_STEP + 5)
    assert [(o, n) for o, n, _ in calls] == [(100, osio.WILLNEED_STEP), (100 + osio.WILLNEED_STEP, osio.WILLNEED_STEP),
                                            (100 + 2 * osio.WILLNEED_STEP, 5)]  # fmt: skip
    calls.clear()
    assert osio.advise_willneed(3, 0, 0) and calls == [(0, 0, "POSIX_FADV_WILLNEED")]


def test_dontneed_covers_the_partial_last_page(monkeypatch):
    calls = []
    monkeypatch.setattr(osio, "_darwin", lambda: False)
    monkeypatch.setattr(osio, "_fadvise", lambda fd, off, n, what: calls.append((off, n)) or True)
    p = osio.page_size()
    osio.advise_dontneed(3, 4 * p, p + 1)
    osio.advise_dontneed(3, 4 * p, 0)
    assert calls == [(4 * p, 2 * p), (4 * p, 0)]

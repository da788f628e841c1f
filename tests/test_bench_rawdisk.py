"""Raw-disk reference reads on tiny files: byte counts, cache dropping, bad extents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness.rawdisk import (
    cached_fraction,
    drop_file_cache,
    pread_extents,
    random_extents,
    sequential_read,
)

ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench` runs


@pytest.fixture()
def files(tmp_path: Path) -> list[str]:
    out = []
    for i, size in enumerate((3 << 20, (1 << 20) + 123)):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(size))
        out.append(str(p))
    return out


def test_sequential_reads_every_byte(files: list[str]) -> None:
    r = sequential_read(files, block_bytes=1 << 20, drop_cache=True)
    assert r.bytes == sum(os.path.getsize(p) for p in files)
    assert r.reads == 3 + 2
    assert r.gb_per_s > 0 and r.lat_max_ms >= r.lat_p50_ms >= 0
    r2 = sequential_read(files, block_bytes=1 << 20, threads=2)
    assert r2.bytes == r.bytes and r2.threads == 2


@pytest.mark.parametrize("threads, qd, chunk", [(1, 1, None), (4, 2, None), (3, None, 4096)])
def test_pread_extents_counts(files: list[str], threads: int, qd: int | None,
                              chunk: int | None) -> None:
    ext = [(files[0], 0, 100_000), (files[0], 2 << 20, 1 << 20), (files[1], 5, 1 << 20)]
    r = pread_extents(ext, threads=threads, queue_depth=qd, chunk_bytes=chunk, drop_cache=True)
    assert r.bytes == 100_000 + (2 << 20)
    expected_reads = 3 if chunk is None else sum(-(-n // chunk) for _, _, n in ext)
    assert r.reads == expected_reads
    assert r.queue_depth == (qd or threads)


def test_bad_extents_rejected(files: list[str]) -> None:
    with pytest.raises(ValueError, match="outside the file"):
        pread_extents([(files[1], 1 << 20, 4096)])
    with pytest.raises(ValueError):
        pread_extents([(files[0], 0, 10)], threads=0)


def test_random_extents_fit_and_do_not_overlap(files: list[str]) -> None:
    ext = random_extents(files, 300_000, 8, align=16384, seed=1)
    assert len(ext) == 8
    seen = set()
    for p, off, n in ext:
        assert off % 16384 == 0 and off + n <= os.path.getsize(p)
        assert (p, off) not in seen
        seen.add((p, off))
    with pytest.raises(ValueError, match="fit"):
        random_extents(files, 1 << 20, 100)


def test_drop_file_cache(files: list[str]) -> None:
    before = cached_fraction(files[0])
    if before is None:
        pytest.skip("mincore unavailable")
    Path(files[0]).read_bytes()
    assert cached_fraction(files[0]) == 1.0
    drop_file_cache(files[0])
    after = cached_fraction(files[0])
    if after and after > 0.5:
        pytest.skip(f"this filesystem keeps pages after DONTNEED ({after:.2f} cached)")
    assert after is not None and after < 0.5


def test_cli(files: list[str]) -> None:
    for args in (["seq", *files], ["extents", "--size", "64k", "--count", "4", "--threads", "2", files[0]]):
        p = subprocess.run([sys.executable, "-m", "bench", "rawdisk", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "GB/s" in p.stdout


def test_sequential_read_surfaces_worker_errors(tmp_path: Path) -> None:
    """A file that fails to read is an error, not a silently lower byte count."""
    from bench.harness.rawdisk import sequential_read

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        sequential_read([tmp_path / "d"])

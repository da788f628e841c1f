"""`bench capped`: a child over its memory cap is OOM-killed and reported; one under it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness.cgroup import (
    CgroupUnavailable,
    MemoryCgroup,
    _own_cgroup_paths,
    run_capped,
)
from mlxstore.sizes import parse_size  # what `bench capped --mem` parses with

ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench` runs


def _cgroups_writable() -> str | None:
    try:
        MemoryCgroup(64 << 20, name=f"mlxstore-bench-probe-{id(object())}").remove()
    except (CgroupUnavailable, OSError) as e:
        return str(e)
    return None


WHY_NOT = _cgroups_writable()
needs_cgroup = pytest.mark.skipif(WHY_NOT is not None, reason=f"memory cgroups not writable: {WHY_NOT}")


def alloc(mib: int) -> list[str]:
    """A python child that touches `mib` MiB of anonymous memory."""
    code = (
        f"a = bytearray({mib} << 20)\n"
        "for i in range(0, len(a), 4096):\n    a[i] = 1\n"
        "print('done')\n"
    )
    return [sys.executable, "-c", code]


def test_parse_size() -> None:
    assert parse_size("1000") == 1000
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("4GiB") == 4 << 30
    assert parse_size("64k") == 64 << 10
    assert parse_size("8GB") == 8 * 10**9  # the project's one parser: GB is decimal, G and GiB binary
    with pytest.raises(ValueError):
        parse_size("lots")


def test_own_cgroup_paths() -> None:
    text = "9:name=systemd:/\n4:memory:/a/b\n0::/c\n"
    assert _own_cgroup_paths(text) == ("/a/b", "/c")
    assert _own_cgroup_paths("0::/only/v2\n") == (None, "/only/v2")


@needs_cgroup
def test_over_cap_is_killed_and_reported() -> None:
    res = run_capped(alloc(300), 100 << 20, stdout=subprocess.DEVNULL)
    assert res.oom_killed
    assert res.returncode == -9
    assert res.peak_bytes is not None and res.peak_bytes <= 100 << 20
    assert not Path(res.cgroup).exists()


@needs_cgroup
def test_under_cap_runs() -> None:
    res = run_capped(alloc(30), 200 << 20, stdout=subprocess.PIPE)
    assert res.returncode == 0 and not res.oom_killed
    assert res.peak_bytes is not None and 30 << 20 < res.peak_bytes < 200 << 20
    assert not Path(res.cgroup).exists()


@needs_cgroup
def test_cli_exit_code_and_report(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "capped", "--mem", "100M", "--json", str(out), "--",
         *alloc(300)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 137, p.stderr
    assert "oom_killed=True" in p.stderr
    assert '"oom_killed": true' in out.read_text()

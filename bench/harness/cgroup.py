"""Running a command under a memory cap (`python -m bench capped --mem SIZE -- CMD...`; the
worker processes of `bench all` use it too).

Why: mlxstore's claim is running models larger than memory. A child memory cgroup of
our own caps anonymous memory *and* page cache, like a smaller machine would, and
reports whether the command was OOM-killed and its peak usage. Only cgroups this
module creates (``mlxstore-bench-<pid>`` under our own memory cgroup) are touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """No memory cgroup we may create children in (not root, no controller, read-only)."""


def _own_cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(v1 memory path, v2 unified path) of this process, from /proc/self/cgroup text."""
    v1 = v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if "memory" in controllers.split(","):
            v1 = path
        elif hid == "0" and controllers == "":
            v2 = path
    return v1, v2


def _v2_mount() -> Path | None:
    for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if (mount / "cgroup.controllers").exists():
            return mount
    return None


@dataclass
class CgroupStats:
    peak_bytes: int | None
    failcnt: int | None
    oom_kills: int | None


class MemoryCgroup:
    """A child memory cgroup of this process's own, removed by ``remove()``/``with``."""

    def __init__(self, limit_bytes: int, name: str | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.name = name or f"mlxstore-bench-{os.getpid()}"
        self.path, self.version = self._locate()
        self._create()

    def _locate(self) -> tuple[Path, int]:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError as e:
            raise CgroupUnavailable(f"cannot read /proc/self/cgroup: {e}") from None
        v1, v2 = _own_cgroup_paths(text)
        if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
            return CGROUP_ROOT / "memory" / v1.lstrip("/") / self.name, 1
        mount = _v2_mount()
        if v2 is not None and mount is not None:
            parent = mount / v2.lstrip("/")
            controllers = (parent / "cgroup.controllers").read_text().split()
            if "memory" not in controllers:
                raise CgroupUnavailable(
                    f"cgroup v2 at {parent} has no memory controller (available: {controllers})"
                )
            return parent / self.name, 2
        raise CgroupUnavailable("no cgroup v1 memory hierarchy or cgroup v2 mount found")

    def _create(self) -> None:
        try:
            self.path.mkdir()
        except FileExistsError:
            raise CgroupUnavailable(f"{self.path} already exists (another run of this pid?)") from None
        except OSError as e:
            raise CgroupUnavailable(f"cannot create {self.path}: {e} (needs root and a writable "
                                    "cgroup filesystem)") from None
        try:
            if self.version == 1:
                self._write("memory.limit_in_bytes", self.limit_bytes)
                memsw = self.path / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # no swapping around the cap where swap exists
                    try:
                        self._write(memsw.name, self.limit_bytes)
                    except OSError:
                        pass
            else:
                self._write("memory.max", self.limit_bytes)
                if (self.path / "memory.swap.max").exists():
                    self._write("memory.swap.max", 0)
        except OSError as e:
            self.remove()
            raise CgroupUnavailable(f"cannot set a memory limit in {self.path}: {e}") from None

    def _write(self, name: str, value: int | str) -> None:
        (self.path / name).write_text(f"{value}\n")

    def _read_int(self, name: str) -> int | None:
        try:
            return int((self.path / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _read_kv(self, name: str) -> dict[str, int]:
        try:
            lines = (self.path / name).read_text().splitlines()
        except OSError:
            return {}
        out = {}
        for line in lines:
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
        return out

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def add(self, pid: int) -> None:
        self.procs_file.write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.procs_file.read_text().split()]
        except OSError:
            return []

    def stats(self) -> CgroupStats:
        if self.version == 1:
            return CgroupStats(
                peak_bytes=self._read_int("memory.max_usage_in_bytes"),
                failcnt=self._read_int("memory.failcnt"),
                oom_kills=self._read_kv("memory.oom_control").get("oom_kill"),
            )
        events = self._read_kv("memory.events")
        return CgroupStats(
            peak_bytes=self._read_int("memory.peak"),
            failcnt=events.get("max"),
            oom_kills=events.get("oom_kill"),
        )

    def remove(self, timeout: float = 5.0) -> None:
        """Kill leftovers in this cgroup only, then remove it."""
        deadline = time.monotonic() + timeout
        while self.path.exists():
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def drop_page_cache() -> None:
    """sync, then drop clean page cache, dentries and inodes (root only)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise PermissionError(f"cannot drop caches (needs root): {e}") from None


@dataclass
class CappedResult:
    returncode: int
    oom_killed: bool
    signal: int | None
    peak_bytes: int | None
    failcnt: int | None
    oom_kills: int | None
    limit_bytes: int
    wall_s: float
    cgroup: str
    cgroup_version: int


def run_capped(cmd: Sequence[str], limit_bytes: int, drop_caches: bool = False,
               **popen_kwargs: object) -> CappedResult:
    """Run ``cmd`` inside a fresh child memory cgroup with ``limit_bytes``; report OOM/peak.

    The child joins the cgroup between fork and exec, so nothing it allocates escapes
    the cap.
    """
    if drop_caches:
        drop_page_cache()
    with MemoryCgroup(limit_bytes) as cg:
        procs = str(cg.procs_file)

        def join() -> None:
            with open(procs, "w") as f:
                f.write(f"{os.getpid()}\n")

        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), preexec_fn=join, **popen_kwargs)  # type: ignore[call-overload]
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        st = cg.stats()
        sig = -rc if rc < 0 else None
        oom = bool(st.oom_kills) or (sig == signal.SIGKILL and bool(st.failcnt))
        return CappedResult(
            returncode=rc, oom_killed=oom, signal=sig, peak_bytes=st.peak_bytes,
            failcnt=st.failcnt, oom_kills=st.oom_kills, limit_bytes=limit_bytes,
            wall_s=wall, cgroup=str(cg.path), cgroup_version=cg.version,
        )

"""Driving bench/harness/worker.py processes: optionally memory-capped, stepped in alternation.

Why: a ratio of two speeds on a shared 2-core VM is only meaningful when both sides run
interleaved (A one token, B one token, ...; see bench/harness/sides.py), each in a process of its
own that the driver steps one request at a time. A capped worker lives in its own child memory cgroup (bench/harness/cgroup.py), joined
between fork and exec, so everything it allocates counts against the cap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.harness.cgroup import MemoryCgroup
from bench.harness.results import REPO


class WorkerDied(RuntimeError):
    """The worker exited (OOM kill, crash) before answering; `info` says how."""

    def __init__(self, name: str, info: dict):
        super().__init__(f"worker {name} died: {info}")
        self.info = info


class WorkerError(RuntimeError):
    """The worker answered with an error (it is still alive)."""


class Worker:
    """One `python -m bench.harness.worker` process; `call(op, **args)` returns its JSON reply."""

    def __init__(self, name: str, log_dir: Path, cap: int | None = None):
        self.name = name
        self.cap = cap
        self.cgroup = MemoryCgroup(cap, name=f"mlxstore-bench-{os.getpid()}-{name}") if cap else None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        procs = str(self.cgroup.procs_file) if self.cgroup else None

        def join() -> None:
            if procs:
                with open(procs, "w") as f:
                    f.write(f"{os.getpid()}\n")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.harness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, cwd=REPO, env=env, preexec_fn=join,
        )  # fmt: skip
        self.final: dict | None = None

    def call(self, op: str, **args) -> dict:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise WorkerDied(self.name, self.close())
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"worker {self.name} {op}: {reply['error']} (log: {self.log_path})")
        return reply

    def close(self) -> dict:
        """Stop the worker; its exit code and the cgroup's peak and OOM counts."""
        if self.final is not None:
            return self.final
        try:
            if self.proc.poll() is None and self.proc.stdin:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        info: dict = {"returncode": rc, "cap": self.cap}
        if self.cgroup is not None:
            st = self.cgroup.stats()
            info.update(peak_bytes=st.peak_bytes, failcnt=st.failcnt, oom_kills=st.oom_kills)
            info["oom_killed"] = bool(st.oom_kills) or (rc == -9 and bool(st.failcnt))
            self.cgroup.remove()
        self._log.close()
        self.final = info
        return info

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge(replies: Sequence[dict]) -> dict:
    """Decode replies of one worker summed: per-token times, stats, disk reads, syncs."""
    out: dict = {"seconds": [], "io_read_bytes": 0, "sync_seconds": 0.0, "batches": []}
    stats: dict = {}
    for r in replies:
        out["seconds"] += r.get("seconds", [])
        out["io_read_bytes"] += r.get("io_read_bytes", 0)
        out["sync_seconds"] += r.get("sync_seconds", 0.0)
        out["batches"] += r.get("batches", [])
        for k, v in r.get("stats", {}).items():
            stats[k] = stats.get(k, 0) + v
    if stats:
        stats["hit_rate"] = stats["hits"] / stats["requests"] if stats.get("requests") else 0.0
        out["stats"] = stats
    out["tokens"] = len(out["seconds"])
    total = sum(out["seconds"])
    out["tok_per_s"] = out["tokens"] / total if total else 0.0
    out["mlx_peak"] = max((r.get("mlx_peak", 0) for r in replies), default=0)
    return out

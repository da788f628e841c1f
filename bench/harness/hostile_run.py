"""Opening hostile stores under watch: every case must end in StoreError naming its problem.

For each case (hostile.py) the runner writes the store's files into a directory whose
parent holds decoys (valid store files a path escape would find), opens the store and,
if that succeeds, reads every tensor, expert group and embedded file with checksums on.
It records what ended the case, and flags anything else:

- "refused": StoreError whose message names the problem (the only good outcome);
- "unnamed": StoreError whose message names none of the case's expected words;
- "crash": any other exception; "accepted": nothing failed; "timeout": over the time limit;
- "escaped": a file outside the store directory was opened;
- "memory": Python (tracemalloc) or MLX memory grew by more than the case's bytes allow,
  i.e. something was allocated from a size field before it was validated.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from bench.harness.hostile import DIRECTORY, FIFO, Case, bases
from mlxstore import store as store_mod
from mlxstore.formats import StoreError

GOOD = "refused"
MEMORY_SLACK = 4 << 20  # bytes any case may use (parsing, error formatting, MLX arrays)
MEMORY_PER_BYTE = 16  # plus this much per byte of the case's files (JSON objects of the index)


class CaseTimeout(BaseException):
    """Raised by the timer; a BaseException so no `except Exception` under test swallows it."""


@dataclass(frozen=True)
class Outcome:
    kind: str
    result: str
    message: str
    seconds: float
    python_peak: int
    mlx_peak: int


def exercise(path: str | os.PathLike) -> None:
    """Everything a loader does with a store's bytes: open, then read all of it, checked."""
    with store_mod.open(path, zero_copy=False) as s:
        for name in s.tensor_names:
            s.array(name, check=True)
        for prefix in s.expert_groups:
            s.group_arrays(prefix, check=True)
        for name in s.files:
            s.read_file(name, check=True)


@contextmanager
def recording_opens(seen: list[str]) -> Iterator[None]:
    """Record the path of every os.open / open / io.open made meanwhile (any thread)."""
    real_os_open, real_open, real_io_open = os.open, builtins.open, io.open

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        seen.append(os.fspath(path))
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def py_open(file, *args, **kwargs):
        if not isinstance(file, int):
            seen.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    os.open, builtins.open, io.open = os_open, py_open, py_open
    try:
        yield
    finally:
        os.open, builtins.open, io.open = real_os_open, real_open, real_io_open


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout after `seconds` of wall time (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"case ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class CaseRunner:
    """Runs cases in `root` (a scratch directory it owns); `close` removes it."""

    def __init__(self, root: str | os.PathLike, *, seconds: float = 5.0, trace_memory: bool = True):
        self.root = Path(root)
        self.store = self.root / "case" / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.seconds = seconds
        self.trace_memory = trace_memory and not tracemalloc.is_tracing()  # else: someone else's
        for base in bases():  # decoys: what `..` or an absolute name would reach
            for name, data in base.files.items():
                (self.store.parent / name).write_bytes(data)
                (self.root / name).write_bytes(data)

    def close(self) -> None:
        shutil.rmtree(self.root / "case", ignore_errors=True)

    def __enter__(self) -> CaseRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, case: Case) -> None:
        for entry in os.scandir(self.store):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        for name, content in case.files.items():
            path = self.store / name
            if content == FIFO:
                os.mkfifo(path)
            elif content == DIRECTORY:
                path.mkdir()
            else:
                path.write_bytes(content)

    def _escaped(self, seen: list[str]) -> list[str]:
        inside = self.store.resolve()
        return [p for p in seen if Path(p).resolve().parent != inside]

    def run(self, case: Case) -> Outcome:
        self._write(case)
        target = self.store / "model.mlxs" if case.open_file else self.store
        seen: list[str] = []
        size = sum(len(v) for v in case.files.values() if isinstance(v, bytes))
        if self.trace_memory:  # traced only while the case runs: tracing slows everything
            tracemalloc.start()
        mx.reset_peak_memory()
        mx_base = mx.get_active_memory()
        result, message = "accepted", ""
        start = time.perf_counter()
        try:
            with time_limit(self.seconds), recording_opens(seen):
                exercise(target)
        except StoreError as e:
            message = str(e)
            result = GOOD if any(word in message for word in case.expect) else "unnamed"
        except CaseTimeout as e:
            result, message = "timeout", str(e)
        except Exception as e:  # noqa: BLE001 - the finding this runner exists for
            result, message = "crash", f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        py_peak = tracemalloc.get_traced_memory()[1] if self.trace_memory else 0
        if self.trace_memory:
            tracemalloc.stop()
        mx_peak = mx.get_peak_memory() - mx_base
        allowed = MEMORY_SLACK + MEMORY_PER_BYTE * size
        escaped = self._escaped(seen)
        if escaped:
            result, message = "escaped", f"opened {escaped} ({message})"
        elif max(py_peak, mx_peak) > allowed:
            result, message = "memory", f"peak {py_peak} B Python, {mx_peak} B MLX > {allowed} ({message})"
        return Outcome(case.kind, result, message[:500], seconds, py_peak, mx_peak)


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts by result and by case kind, timing and memory extremes."""
    by_kind: dict[str, Counter] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.result] += 1
    seconds = sorted(o.seconds for o in outcomes) or [0.0]
    return {
        "cases": len(outcomes),
        "results": dict(Counter(o.result for o in outcomes)),
        "kinds": {k: dict(v) for k, v in sorted(by_kind.items())},
        "seconds_median": seconds[len(seconds) // 2],
        "seconds_max": seconds[-1],
        "slowest": [(o.kind, round(o.seconds, 4)) for o in sorted(outcomes, key=lambda o: -o.seconds)[:5]],
        "python_peak_max": max((o.python_peak for o in outcomes), default=0),
        "mlx_peak_max": max((o.mlx_peak for o in outcomes), default=0),
        "failures": [o.__dict__ for o in outcomes if o.result != GOOD][:20],
    }

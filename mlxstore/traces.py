"""Where the bundled routing traces live, and how a name or a path finds one.

Why: replaying real routing needs real traces; carrying them in the package (with their
source and license, data/traces/README.md) makes the benchmarks and the advisor work in
a fresh clone or install. MLXSTORE_TRACES points at another folder of traces.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "data" / "traces"
SUFFIXES = (".route.csv", ".route.csv.zst")


def trace_dir() -> Path:
    """MLXSTORE_TRACES when set, else the bundled traces."""
    env = os.environ.get("MLXSTORE_TRACES")
    return Path(env) if env else BUNDLED_DIR


def trace_name(path: str | os.PathLike) -> str:
    """A trace's name without its folder and suffix: 'qwen3-30b-a3b'."""
    name = Path(path).name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def traces(folder: str | os.PathLike | None = None) -> list[Path]:
    """Every trace in `folder` (default `trace_dir()`), sorted by name."""
    where = Path(folder) if folder is not None else trace_dir()
    found = [p for p in where.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)] if where.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def find_trace(name_or_path: str | os.PathLike) -> Path:
    """An existing file, or the trace of that name ('qwen3-30b-a3b', with or without suffix)
    in `trace_dir()` or the bundled folder; FileNotFoundError names what there is."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    want = trace_name(p)
    for folder in dict.fromkeys((trace_dir(), BUNDLED_DIR)):
        for t in traces(folder):
            if trace_name(t) == want:
                return t
    known = ", ".join(trace_name(t) for t in traces(BUNDLED_DIR)) or "none"
    raise FileNotFoundError(f"no trace file {os.fspath(name_or_path)!r} (bundled traces: {known})")

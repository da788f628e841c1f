"""The benchmark's model: generate it (once), pack it timed against `cp` (P7), copy stores.

Why P7 lives here: the store every later figure streams from is the one this timed `pack`
wrote, so "the same bytes" holds by construction. Both copies start from a cold page cache
(the source's pages dropped) and end with their output fsynced, so neither is credited
with writes still sitting in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.harness.rawdisk import drop_file_cache
from bench.harness.scale import Scale


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))


def drop_tree_cache(path: Path) -> None:
    for p in files_under(path):
        drop_file_cache(p)


def fsync_tree(path: Path) -> None:
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_model(scale: Scale, src: Path) -> dict:
    """Generate the random-weight model at `src` unless one with the same config is there."""
    from bench.harness.genmodel import write_model

    config = scale.genmodel_config()
    marker = src / "bench-config.json"
    if marker.exists() and json.loads(marker.read_text()) == config:
        return {"generated": False, "bytes": tree_bytes(src)}
    if src.exists():
        shutil.rmtree(src)
    info = write_model(src, config)
    marker.write_text(json.dumps(config))
    return {"generated": True, **info}


def _pack_cmd() -> list[str]:
    exe = shutil.which("mlxstore")
    return [exe] if exe else [sys.executable, "-c", "from mlxstore.cli.main import main; main()"]


def timed_cold(cmd: list[str], src: Path, dst: Path) -> float:
    """Wall seconds of `cmd` copying src -> dst from a cold cache, output fsynced."""
    if dst.exists():
        shutil.rmtree(dst)
    drop_tree_cache(src)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    fsync_tree(dst)
    return time.perf_counter() - t0


def pack_vs_cp(src: Path, store: Path, cp_dst: Path, repeats: int = 3) -> dict:
    """P7: `mlxstore pack` and `cp -r` of the same source, alternated; the store is kept."""
    nbytes = sum(p.stat().st_size for p in files_under(src) if p.name != "bench-config.json")
    pack_s, cp_s = [], []
    for _ in range(repeats):
        cp_s.append(timed_cold(["cp", "-r", str(src), str(cp_dst)], src, cp_dst))
        shutil.rmtree(cp_dst)
        pack_s.append(timed_cold([*_pack_cmd(), "pack", "-q", str(src), str(store)], src, store))
    pack_gbps, cp_gbps = nbytes / min(pack_s) / 1e9, nbytes / min(cp_s) / 1e9
    return {"bytes": nbytes, "pack_seconds": pack_s, "cp_seconds": cp_s, "pack_gbps": pack_gbps,
            "cp_gbps": cp_gbps, "ratio": pack_gbps / cp_gbps,
            "note": "best of the alternated runs each; cold source, output fsynced, CLI wall "
                    "time including interpreter start"}  # fmt: skip


def store_copies(store: Path, root: Path, n: int) -> list[Path]:
    """`n` private copies of a store (own page cache each), reused across runs when current."""
    out = []
    stamp = str(max(p.stat().st_mtime_ns for p in files_under(store)))
    for i in range(n):
        dst = root / f"copy{i}.store"
        marker = root / f"copy{i}.stamp"
        if not (dst.exists() and marker.exists() and marker.read_text() == stamp):
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(store, dst)
            marker.write_text(stamp)
        drop_tree_cache(dst)
        out.append(dst)
    return out

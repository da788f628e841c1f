"""`mlxstore pack` killed with SIGKILL in every phase of the writer: DST is then absent or
a complete store that verifies (the one that was there before, or the new one), never a
damaged one; a rerun succeeds, and no temporary files outlive the rerun.

Why these points and not random times: each phase leaves different things on disk, so
one kill per phase covers every state a crash can leave, where random times mostly land
in the longest phase. The pack process kills itself (a real SIGKILL: no handler, no
cleanup) on the n-th call of the writer's own steps, counted in a reference run:

- `write` 1: the partial directory exists, no tensor data yet; `write` half: mid-data;
- `pwrite` 1: data written, index not; mid: index written, some shards' preambles
  written, others not;
- `rename` 1: everything fsynced, nothing renamed; with an old DST, `rename` 2: the old
  store moved aside, the new one not yet in place (the next writer puts the old back);
- `fsync_dir` 2: the new store renamed into place, the old one not yet removed.

Where DST does not exist, a kill before the rename must leave it absent; over a complete
DST (--overwrite), every kill before the rename leaves the old DST alone, so one of those
points stands for all. The points run in three lanes of one DST each, two at a time. The
model is small but packed into 64 KiB shards, so the store has many files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlxstore.formats import StoreReader
from mlxstore.formats.writer import partial_dirs, remove_stale_partials
from mlxstore.synth import make_model_dir

OPTIONS = ["-q", "--overwrite", "--max-shard-size", "64KiB", "--alignment", "4096"]

# Packs, killing itself on call `nth` of step `point` ("none": never); prints the counts.
_CHILD = r"""
import json, os, signal, sys
from mlxstore.formats import writer

point, nth = sys.argv[1], int(sys.argv[2])
counts = {}

def trap(owner, name, key):
    real = getattr(owner, name)
    def step(*args, **kw):
        counts[key] = counts.get(key, 0) + 1
        if key == point and counts[key] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kw)
    setattr(owner, name, step)

trap(writer.StoreWriter, "_write", "write")
trap(os, "pwrite", "pwrite")
trap(os, "rename", "rename")
trap(writer, "_fsync_dir", "fsync_dir")
from mlxstore.cli.main import main
sys.argv = ["mlxstore", "pack", *sys.argv[3:]]
try:
    main()
finally:
    print(json.dumps(counts), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    overrides = {"num_hidden_layers": 4, "num_experts": 32, "hidden_size": 256,
                 "moe_intermediate_size": 256, "vocab_size": 512}  # fmt: skip
    return make_model_dir("qwen3_moe", tmp_path_factory.mktemp("crash") / "src", config_overrides=overrides)


def _pack(src: Path, dst: Path, point: str = "none", nth: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _CHILD, point, str(nth), str(src), str(dst), *OPTIONS]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _digest(dst: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dst.iterdir())}


def _state(dst: Path, reference: dict[str, str]) -> str:
    """'absent' or 'complete'; anything else fails the test."""
    if not dst.exists():
        return "absent"
    with StoreReader(dst) as r:
        assert r.verify() == [], "DST exists but is damaged"
    assert _digest(dst) == reference, "DST exists but differs from a complete pack"
    return "complete"


def _lanes(counts: dict[str, int]) -> dict[str, tuple[bool, list[tuple[str, int]]]]:
    """lane -> (replacing a complete DST, kill points); three points each, so they take turns evenly."""
    mid_data, mid_headers = ("write", max(2, counts["write"] // 2)), ("pwrite", 1 + counts["pwrite"] // 2)
    return {
        "new-data": (False, [("write", 1), mid_data, ("pwrite", 1)]),
        "new-commit": (False, [mid_headers, ("rename", 1), ("fsync_dir", 2)]),
        "replace": (True, [mid_headers, ("rename", 2), ("fsync_dir", 2)]),
    }


def _lane(src: Path, dst: Path, ref: Path, reference: dict, replacing: bool, points: list) -> list[str]:
    seen = []
    for point, nth in points:
        if replacing and not dst.exists():
            shutil.copytree(ref, dst)
        elif not replacing and dst.exists():
            shutil.rmtree(dst)
        done = _pack(src, dst, point, nth)
        assert done.returncode == -9, f"{point} {nth}: not killed: {done.stderr[-2000:]}"
        state = _state(dst, reference)
        if replacing:  # the old store is never lost: in place, or put back by the next writer
            remove_stale_partials(dst)
            assert _state(dst, reference) == "complete", (point, nth)
        else:  # the new store appears only once it is complete
            assert state == ("complete" if point == "fsync_dir" else "absent"), (point, nth, state)
        seen.append(f"{point} {nth}: {state}")
    done = _pack(src, dst)  # a rerun over whatever the last kill left
    assert done.returncode == 0, done.stderr[-2000:]
    assert _state(dst, reference) == "complete"
    assert partial_dirs(dst) == [], "temporary files left after a successful rerun"
    return seen


def test_pack_killed_in_every_phase(source, tmp_path):
    ref = tmp_path / "reference" / "model.store"
    ref.parent.mkdir()
    done = _pack(source, ref)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stderr.strip().splitlines()[-1])
    assert counts["pwrite"] > 4 and counts["write"] > 4, counts  # many shards, many pieces
    reference = _digest(ref)
    lanes = _lanes(counts)
    dsts = {name: tmp_path / name / "model.store" for name in lanes}
    for d in dsts.values():
        d.parent.mkdir()
    with ThreadPoolExecutor(2) as pool:  # one pack at a time per core of a 2-core CI machine
        seen = list(pool.map(lambda name: _lane(source, dsts[name], ref, reference, *lanes[name]), lanes))
    print("\n" + "\n".join(f"{name}: {', '.join(s)}" for name, s in zip(lanes, seen)))

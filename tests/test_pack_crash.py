"""`mlxstore pack` killed with SIGKILL at random points: DST is absent or a complete store
that verifies, a rerun succeeds, and no temporary files outlive the rerun.

Two lanes (one DST each) run concurrently; each lane kills 10 pack processes in a row at
random times (two while the process still starts up, the rest while it writes: after its
partial directory appears), checking DST after every kill, then lets a last run finish.
The model is small but packed into 64 KiB shards, so the write phase makes ~140 files.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlxstore.formats import StoreReader
from mlxstore.synth import make_model_dir

LANES, KILLS_PER_LANE = 2, 10  # one lane per core of a 2-core CI machine
PACK = [sys.executable, "-c", "from mlxstore.cli.main import main; main()", "pack"]
OPTIONS = ["-q", "--overwrite", "--max-shard-size", "64KiB", "--alignment", "4096"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    overrides = {"num_hidden_layers": 4, "num_experts": 32, "hidden_size": 256,
                 "moe_intermediate_size": 256, "vocab_size": 512}  # fmt: skip
    return make_model_dir("qwen3_moe", tmp_path_factory.mktemp("crash") / "src", config_overrides=overrides)


def _digest(dst: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dst.iterdir())}


def _leftovers(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.mlxstore-"))


def _timed_run(src: Path, dst: Path) -> tuple[float, float]:
    """Pack to completion; seconds until the partial directory appeared, and in all."""
    start = time.perf_counter()
    proc = subprocess.Popen([*PACK, str(src), str(dst), *OPTIONS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    appeared = None
    while proc.poll() is None:
        if appeared is None and (dst.parent / f".{dst.name}{PARTIAL}{proc.pid}").exists():
            appeared = time.perf_counter() - start
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return appeared or 0.0, time.perf_counter() - start


def _check_dst(dst: Path, reference: dict[str, str]) -> str:
    """'absent' or 'complete'; anything else fails the test."""
    if not dst.exists():
        return "absent"
    with StoreReader(dst) as r:
        assert r.verify() == [], "DST exists but is damaged"
    assert _digest(dst) == reference, "DST exists but differs from a complete pack"
    return "complete"


def _lane(src: Path, dst: Path, reference: dict[str, str], startup: float, write: float, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    kills: list[tuple] = []
    attempts = 0
    while len(kills) < KILLS_PER_LANE and attempts < 4 * KILLS_PER_LANE:
        attempts += 1
        proc = subprocess.Popen([*PACK, str(src), str(dst), *OPTIONS], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        start = time.perf_counter()
        if len(kills) < 2:  # while it starts up: imports, reading the source
            time.sleep(rng.uniform(0, startup))
        else:  # while it writes: the partial directory exists
            mine = dst.parent / f".{dst.name}{PARTIAL}{proc.pid}"  # not a dead run's leftover
            while proc.poll() is None and not mine.exists():
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 1.2 * write))
        alive = proc.poll() is None
        proc.kill()
        proc.wait()
        if alive:
            writing = (dst.parent / f".{dst.name}{PARTIAL}{proc.pid}").exists()
            kills.append((round(time.perf_counter() - start, 3), _check_dst(dst, reference), writing))
    proc = subprocess.run([*PACK, str(src), str(dst), *OPTIONS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _check_dst(dst, reference) == "complete"
    assert _leftovers(dst) == [], "temporary files left after a successful rerun"
    return kills


PARTIAL = ".mlxstore-partial-"


def test_pack_killed_at_random_points(source, tmp_path):
    ref = tmp_path / "reference" / "model.store"
    ref.parent.mkdir()
    appeared, total = _timed_run(source, ref)
    reference = _digest(ref)
    startup, write = appeared, max(total - appeared, 0.05)
    dsts = [tmp_path / f"lane{k}" / "model.store" for k in range(LANES)]
    for d in dsts:
        d.parent.mkdir()
    with ThreadPoolExecutor(LANES) as pool:
        lanes = list(pool.map(lambda k: _lane(source, dsts[k], reference, startup, write, k), range(LANES)))
    kills = [k for lane in lanes for k in lane]
    assert len(kills) >= 20, kills
    states = [state for _, state, _ in kills]
    print(f"\n{len(kills)} kills at {sorted(t for t, _, _ in kills)} s: {states.count('absent')} absent, "
          f"{states.count('complete')} complete, {sum(w for _, _, w in kills)} with the run's partial store on disk")  # fmt: skip

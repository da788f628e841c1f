"""`bench gpu` runs whole on a small model (on the CPU here): the stage is what a scarce
GPU run executes, so a crash must show up in CI, not on the lent machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench` runs


def test_gpu_stage_writes_targets_profile_and_exactness(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "gpu", "--dir", str(tmp_path / "work"), "--layers", "2",
           "--hidden", "128", "--moe-intermediate", "128", "--vocab", "512", "--tokens", "2", "--rounds", "1",
           "--prompt", "64", "--out", str(out), "--configs", "all-fit,all-hits-host,all-hits-optimistic,25%-staged,25%-staged-perexpert,25%-direct,"
           "25%-staged-scatter-hitsfirst,25%-staged-ahead-foresight"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    assert report["exact"] == {"all-fit": True, "all-hits-host": True, "all-hits-optimistic": True, "25%-staged": True,
                               "25%-staged-perexpert": True, "25%-direct": True,
                               "25%-staged-scatter-hitsfirst": True, "25%-staged-ahead-foresight": True}  # fmt: skip
    assert {t["id"] for t in report["targets"]} == {"G1", "G2", "G2-host", "G2h", "G3", "G4", "G5"}
    rows = {(r["config"], r["phase"]): r for r in report["decode"]}
    assert set(rows) == {(c, p) for c in ("resident", "all-fit", "all-hits-host", "all-hits-optimistic", "25%-staged",
                                          "25%-staged-perexpert", "25%-direct", "25%-staged-scatter-hitsfirst",
                                          "25%-staged-ahead-foresight")
                          for p in ("cold", "warm")}  # fmt: skip
    assert set(report["prompt"]) == {"25%-staged", "25%-staged-perexpert", "25%-staged-scatter-hitsfirst",
                                     "25%-staged-ahead-foresight"}  # each staged variant's prompt, one bound
    assert rows[("all-hits-optimistic", "warm")]["optimistic_share"] > 0.5
    assert rows[("all-hits-host", "warm")]["optimistic_share"] == 0
    ahead = rows[("25%-staged-ahead-foresight", "cold")]
    assert ahead["ahead_share"] > 0 and ahead["ahead_mb_per_token"] > 0 and rows[("25%-staged", "cold")]["ahead_share"] == 0
    assert ahead["ahead_paused_share"] == 0  # foresight: every read-ahead pays
    staged = rows[("25%-staged", "cold")]
    assert staged["missed_mb_per_token"] > 0 and 0 < staged["hit_rate"] < 1
    assert staged["copy_ms_per_token"] > 0 and rows[("25%-direct", "cold")]["copy_ms_per_token"] < 0.01
    profile = staged["profile_ms"]
    assert abs(sum(v for k, v in profile.items() if k != "total") - profile["total"]) < 1e-6
    assert "Where a token's time goes" in (out / "gpu.md").read_text()
    # a run cut short in its prompt phase keeps its decode table: rebuilt from the partial file
    again = tmp_path / "again"
    cmd = [sys.executable, "-m", "bench", "gpu", "--from-partial", str(out / "gpu-partial.json"), "--out", str(again)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rebuilt = json.loads((again / "gpu.json").read_text())
    assert rebuilt["decode"] == report["decode"] and rebuilt["machine"] == report["machine"]
    assert [t["value"] for t in rebuilt["targets"] if t["id"] != "G5"] == [
        t["value"] for t in report["targets"] if t["id"] != "G5"]
    assert "Rebuilt from gpu-partial.json" in (again / "gpu.md").read_text()


def test_a_partial_without_decode_segments_is_one_line(tmp_path: Path) -> None:
    partial = tmp_path / "gpu-partial.json"
    partial.write_text(json.dumps({"exact": {"all-fit": True}}))
    cmd = [sys.executable, "-m", "bench", "gpu", "--from-partial", str(partial)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no timed decode segments" in done.stderr
    assert "Traceback" not in done.stderr

"""`bench suite` keeps each test file's outcome, also of a file cut short at its time
limit: on the GPU machine that is all a run at its limit leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from bench.commands.suite import command, run_file

ROOT = Path(__file__).resolve().parents[1]

MIXED = """
import time, pytest

def test_fine():
    assert 1 + 1 == 2

def test_wrong():
    assert 2 + 2 == 5, "arithmetic is off"

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
"""

SLOW = """
import time

def test_quick():
    pass

def test_forever():
    time.sleep(600)
"""


def test_a_finished_file_reports_counts_and_why(tmp_path: Path) -> None:
    f = tmp_path / "test_mixed.py"
    f.write_text(MIXED)
    row = run_file(str(f), 120, tmp_path)
    assert (row["passed"], row["failed"], row["skipped"], row["errors"]) == (1, 1, 1, 0)
    assert row["exit"] == 1 and "tail" in row
    (bad,) = row["failures"]
    assert bad["test"].endswith("test_wrong") and "arithmetic is off" in bad["why"]


def test_a_file_cut_short_names_the_test_it_was_in(tmp_path: Path) -> None:
    f = tmp_path / "test_slow.py"
    f.write_text(SLOW)
    row = run_file(str(f), 20, tmp_path)
    assert row["timed_out"] and row["exit"] is None
    assert row["passed"] == 1 and row["failed"] == 0
    assert row["last"].endswith("test_slow.py::test_forever")
    assert row["seconds"] < 60  # killed at its limit, not at the sleep's end


def test_unknown_file_is_a_one_line_error(tmp_path: Path) -> None:
    got = CliRunner().invoke(
        command, ["tests/test_no_such_thing.py", "--out", str(tmp_path / "s.json")]
    )
    assert got.exit_code != 0
    assert got.output.strip().splitlines() == [
        "Error: tests/test_no_such_thing.py: no such test file"
    ]


def test_skip_done_runs_only_what_is_left(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier.json"
    everything = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    keep = "tests/test_sizes.py"
    rows = [{"file": f, "exit": 0} for f in everything if f != keep]
    earlier.write_text(json.dumps({"budget": 1, "files": rows}))
    out = tmp_path / "now.json"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "suite",
        "--budget",
        "300",
        "--out",
        str(out),
        "--skip-done",
        str(earlier),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["files"]
    assert row["file"] == keep and row["exit"] == 0 and row["passed"] > 0 and row["failed"] == 0

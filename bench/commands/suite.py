"""`python -m bench suite`: the test suite file by file within a time budget, each file's
outcome kept as it finishes.

Why: on the lent GPU machine a run may take at most 600 s and MLX compiles each kernel
shape on first use, so the whole suite does not fit one run, and a run cut at its limit
loses what pytest would print at the end (which tests failed, and why). Here every test
file runs in a pytest of its own, given what is left of the budget; its JUnit report is
read as soon as it ends, and a file cut short says which test it was in. The table and
the JSON (`--out`, one file, as the GPU machine sends back few) hold every file's counts,
seconds, failures with their first lines and the output's end of a file that failed or
was cut short, so the next run can start where this one stopped (`--skip-done`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import click

from bench.harness.results import REPO, new_result

VERDICT = re.compile(
    r"^(\S+\.py::\S+) (PASSED|FAILED|SKIPPED|ERROR)", re.M
)  # pytest -v's line per test
TAIL = 1500  # characters of a failed or cut-short file's output kept in the JSON
PYTEST = [
    sys.executable,
    "-m",
    "pytest",
    "-p",
    "no:cacheprovider",
    "-o",
    "addopts=",
    "-v",
    "--tb=short",
]


def _junit(path: Path) -> dict:
    """Counts and failures of one JUnit report."""
    out = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failures": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            out["failed" if bad.tag == "failure" else "errors"] += 1
            text = (bad.get("message") or bad.text or "").strip().splitlines()
            out["failures"].append({"test": name, "why": " | ".join(text[:3])[:400]})
        elif case.find("skipped") is not None:
            out["skipped"] += 1
        else:
            out["passed"] += 1
    return out


def run_file(test_file: str, seconds: float, work: Path) -> dict:
    """One test file in its own pytest, at most `seconds`."""
    report = work / (Path(test_file).stem + ".xml")
    log = work / (Path(test_file).stem + ".log")
    began = time.perf_counter()
    with log.open("w") as f:
        # a session of its own: a file cut short takes the servers and workers it started along
        proc = subprocess.Popen([*PYTEST, f"--junitxml={report}", test_file], cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    text = log.read_text(errors="replace")
    row = {"file": test_file, "seconds": time.perf_counter() - began, "exit": code}
    if code not in (None, 0):
        row["tail"] = text[-TAIL:]
    if code is not None and report.exists():
        return {**row, **_junit(report)}
    verdicts = VERDICT.findall(text)
    counts = {
        v: sum(1 for _, x in verdicts if x == v) for v in ("PASSED", "FAILED", "SKIPPED", "ERROR")
    }
    started = [ln.split()[0] for ln in text.splitlines() if ".py::" in ln.split(" ", 1)[0]]
    return {**row, "passed": counts["PASSED"], "failed": counts["FAILED"], "skipped": counts["SKIPPED"],
            "errors": counts["ERROR"], "timed_out": code is None, "tail": text[-TAIL:],
            "failures": [{"test": t, "why": "(no report: the file was cut short)"}
                         for t, v in verdicts if v in ("FAILED", "ERROR")],
            "last": started[-1] if started else None}  # fmt: skip


@click.command("suite")
@click.argument("files", nargs=-1)
@click.option("--budget", default=540.0, show_default=True, help="Seconds for the whole run.")
@click.option(
    "--out",
    default=None,
    help="JSON results file (default: a new bench/results/suite-<time>.json).",
)
@click.option(
    "--skip-done",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="An earlier run's JSON: files it finished are not run again.",
)
def command(files: tuple[str, ...], budget: float, out: str | None, skip_done: str | None) -> None:
    """Run test files (default: every tests/test_*.py; the ones named first) one pytest each."""
    everything = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py"))
    for f in files:
        if not (REPO / f).is_file():
            raise click.ClickException(f"{f}: no such test file")
    order = list(dict.fromkeys([*files, *everything]))
    if skip_done:
        done = {
            r["file"]
            for r in json.loads(Path(skip_done).read_text())["files"]
            if r.get("exit") is not None
        }
        order = [f for f in order if f not in done]
    out_path = Path(out) if out else new_result("suite")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix="mlxstore-suite-")
    )  # logs and reports; the JSON keeps what matters
    deadline = time.perf_counter() + budget
    rows = []
    for f in order:
        left = deadline - time.perf_counter()
        if left < 5:
            rows.append({"file": f, "seconds": 0.0, "exit": None, "not_run": True})
            continue
        rows.append(run_file(f, left, work))
        out_path.write_text(
            json.dumps({"budget": budget, "files": rows}, indent=1) + "\n"
        )  # kept as it goes
    out_path.write_text(json.dumps({"budget": budget, "files": rows}, indent=1) + "\n")
    click.echo(f"{'file':44s} {'pass':>5s} {'fail':>5s} {'skip':>5s} {'err':>4s} {'s':>6s}")
    for r in rows:
        if r.get("not_run"):
            click.echo(f"{r['file']:44s} not run (budget spent)")
            continue
        cut = f"  cut short in {r.get('last')}" if r.get("timed_out") else ""
        click.echo(f"{r['file']:44s} {r['passed']:5d} {r['failed']:5d} {r['skipped']:5d} {r['errors']:4d} "
                   f"{r['seconds']:6.0f}{cut}")  # fmt: skip
        for bad in r["failures"]:
            click.echo(f"    {bad['test']}: {bad['why']}")
    click.echo(f"wrote {out_path}")

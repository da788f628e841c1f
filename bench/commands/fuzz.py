"""`python -m bench fuzz --cases 100000`: hostile stores at scale (bench.harness.hostile).

The same hypothesis generator as tests/test_fuzz_store.py, run for many more cases with
outcomes recorded instead of asserted: cases per second, results by case kind, the slowest
case and the largest memory peak. Exit status 1 if any case ended other than "refused".
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from bench.harness.results import new_result


def run(cases: int, seed: int, trace_memory: bool, seconds: float, root: Path, keep: Path) -> dict:
    """Draw `cases` hostile stores, open each under watch, summarize the outcomes; cases
    that end other than "refused" are saved under `keep` (replay: hostile.load_case)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    from bench.harness.hostile import bases, save_case
    from bench.harness.hostile import cases as hostile_cases
    from bench.harness.hostile_run import GOOD, CaseRunner, summarize

    bases()
    outcomes = []
    with CaseRunner(root, seconds=seconds, trace_memory=trace_memory) as runner:

        @hyp_seed(seed)
        @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=hostile_cases())
        def each(case) -> None:
            outcomes.append(runner.run(case))
            if outcomes[-1].result != GOOD:
                save_case(case, keep / f"{len(outcomes):06d}-{case.kind}")

        start = time.perf_counter()
        each()
        elapsed = time.perf_counter() - start
    summary = summarize(outcomes)
    summary.update(seed=seed, seconds=elapsed, cases_per_second=len(outcomes) / elapsed,
                   trace_memory=trace_memory, time_limit=seconds)  # fmt: skip
    return summary


@click.command("fuzz")
@click.option("--cases", default=100_000, show_default=True, help="Hostile stores to try.")
@click.option("--seed", default=0, show_default=True, help="Hypothesis seed (runs are reproducible).")
@click.option("--seconds", default=5.0, show_default=True, help="Time limit per case.")
@click.option("--no-memory", is_flag=True, help="Skip tracemalloc (faster; no Python allocation check).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON results (default: a new bench/results/fuzz-<UTC time>.json; never the committed fuzz.json).")  # fmt: skip
def command(cases: int, seed: int, seconds: float, no_memory: bool, out: Path | None) -> None:
    """Open hostile stores; every one must end in StoreError naming its problem."""
    out = out or new_result("fuzz")
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="mlxstore-fuzz-", dir=shm if shm.is_dir() else None) as tmp:
        summary = run(cases, seed, not no_memory, seconds, Path(tmp), out.with_suffix(".failures"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    click.echo(f"{summary['cases']} cases in {summary['seconds']:.0f} s ({summary['cases_per_second']:.0f}/s): "
               f"{summary['results']}")  # fmt: skip
    click.echo(f"slowest case {summary['seconds_max'] * 1000:.1f} ms (median {summary['seconds_median'] * 1000:.2f} ms); "
               f"peak Python {summary['python_peak_max'] / 1024:.0f} KiB, MLX {summary['mlx_peak_max'] / 1024:.0f} KiB")  # fmt: skip
    click.echo(f"{len(summary['kinds'])} case kinds; summary in {out}")
    if set(summary["results"]) != {"refused"}:
        for f in summary["failures"]:
            click.echo(f"  {f['kind']}: {f['result']}: {f['message']}")
        raise SystemExit(1)

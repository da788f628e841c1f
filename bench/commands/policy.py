"""`python -m bench policy`: the command of bench/harness/policy_sim.py."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bench.harness.policy_sim import (
    SLOTS,
    default_trace_dir,
    default_traces,
    format_table,
    readme_check,
    report_name,
    simulate,
)
from bench.harness.results import new_result
from mlxstore.formats.route_trace import load_route_trace
from mlxstore.moe.policy import DEFAULT_POLICY, POLICIES


@click.command("policy")
@click.option("--trace", "traces", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Route trace CSV (repeatable); default: every bundled trace (mlxstore/data/traces).")
@click.option("--slots", default=",".join(map(str, SLOTS)), show_default=True,
              help="Comma-separated slots per layer.")
@click.option("--policies", default=",".join(POLICIES), show_default=True,
              help="Comma-separated policy names.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="JSON results file (default: a new bench/results/policy-<time>.json).")
def command(traces: tuple[str, ...], slots: str, policies: str, out: str) -> None:
    """Replay routing traces through each slot policy at several cache sizes."""
    paths = [Path(t) for t in traces] or default_traces()
    if not paths:
        raise click.ClickException(f"no traces found in {default_trace_dir()} (set MLXSTORE_TRACES)")
    slot_list = [int(s) for s in slots.split(",") if s]
    names = [p for p in policies.split(",") if p]
    for p in names:
        if p not in POLICIES:
            raise click.BadParameter(f"unknown policy {p!r}; choose from {sorted(POLICIES)}")
    report = {"default_policy": DEFAULT_POLICY, "slots": slot_list, "traces": {}}
    for path in paths:
        trace = load_route_trace(path)
        result = simulate(trace, names, slot_list)
        check = readme_check(report_name(path), result)
        if check is not None:
            result["readme_lru_check"] = check
        report["traces"][report_name(path)] = result
        click.echo(format_table(report_name(path), result, names))
        if check is not None:
            ours = "/".join(f"{x:.3f}" for x in check["ours"])
            want = "/".join(f"{x:.2f}" for x in check["readme"])
            click.echo(f"README check, LRU one expert at a time: {ours} vs README {want}: "
                       f"{'match' if check['match'] else 'MISMATCH'}")
    out = out or str(new_result("policy"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    click.echo(f"\nwrote {out}")

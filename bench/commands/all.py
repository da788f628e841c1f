"""`python -m bench all [--quick]`: every target of issue 4, measured side by side in one run.

Writes `<out>/latest.json` ({"P1": {"value", "target", "met", ...}, ..., "details": ...}),
rewritten after every stage so an interrupted run keeps what it measured, a table on
stdout, and `<out>/latest-budget.png` (decode tok/s and hit rate vs memory budget).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from bench.harness.context import Ctx
from bench.harness.policy_sim import default_trace
from bench.harness.prepare import ensure_model, pack_vs_cp
from bench.harness.report import full_report, plot
from bench.harness.results import REPO, new_result
from bench.harness.scale import SCALES
from bench.harness.targets import TARGETS, verdict

STAGES = ("p7", "p6", "p1", "p23", "p48", "p5", "table", "curve")


def machine() -> dict:
    import mlx.core as mx
    import mlx_lm

    mem = next((int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), None)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "mem_bytes": mem,
            "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__, "device": str(mx.default_device()),
            "python": platform.python_version(), "git": commit,
            "disk_free_gb": round(shutil.disk_usage(REPO).free / 1e9, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}  # fmt: skip


def _write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "latest.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, out / "latest.json")


def run_all(scale_name: str, out: Path, work: Path, trace: Path, stages: tuple[str, ...] = STAGES,
            echo=print) -> dict:  # fmt: skip
    """Run the chosen stages at a scale; returns (and keeps writing) the results dict."""
    from bench.stages.decode_targets import p1, p4_p8
    from bench.stages.io_targets import p2_p3
    from bench.stages.policy_target import p6
    from bench.stages.prompt_target import p5
    from bench.stages.sweeps import budget_curve, prefetch_table

    scale = SCALES[scale_name]
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(scale, work / "src", work / "model.store", trace, work)
    results: dict = {tid: {**verdict(tid, None, "not measured"), "met": None} for tid in TARGETS}
    details: dict = {"stage_seconds": {}}
    results.update(details=details, scale=scale.as_dict(), machine=machine(), trace=str(trace),
                   command=" ".join(["python -m bench all", *sys.argv[2:]]))  # fmt: skip

    def stage(name: str, fn) -> None:
        if name not in stages:
            return
        echo(f"[bench] {name} ...")
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failed stage must not lose the others' figures
            details.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            echo(f"[bench] {name} failed: {type(e).__name__}: {e}")
        details["stage_seconds"][name] = round(time.perf_counter() - t0, 1)
        _write(out, results)

    def do_p7() -> None:
        details["model"] = ensure_model(scale, ctx.src)
        info = pack_vs_cp(ctx.src, ctx.store, work / "cp-copy")
        results["P7"] = verdict("P7", info["ratio"])
        details["P7"] = info

    def do_p6() -> None:
        results["P6"], details["P6"] = p6()

    def do_p1() -> None:
        results["P1"], details["P1"] = p1(ctx)

    def do_p23() -> None:
        results["P2"], details["P2"], results["P3"], details["P3"] = p2_p3(ctx)

    def do_p48() -> None:
        results["P4"], details["P4"], results["P8"] = p4_p8(ctx)

    def do_p5() -> None:
        plan = details.get("P4", {}).get("plan") or {}
        results["P5"], details["P5"] = p5(ctx, plan.get("slots_per_layer"))

    def do_table() -> None:
        details["prefetch_table"] = prefetch_table(ctx)

    def do_curve() -> None:
        details["budget_curve"] = budget_curve(ctx)

    if not ctx.store.exists() and "p7" not in stages:
        stages = ("p7", *stages)
    for name, fn in (("p7", do_p7), ("p6", do_p6), ("p1", do_p1), ("p23", do_p23),
                     ("p48", do_p48), ("p5", do_p5), ("table", do_table), ("curve", do_curve)):  # fmt: skip
        stage(name, fn)
    png = plot(results, out / "latest-budget.png")
    results["png"] = str(png) if png else None
    _write(out, results)
    (out / "latest.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The report as a markdown page: command, machine, and the tables."""
    m = results.get("machine", {})
    sc = results.get("scale", {})
    return (f"# mlxstore benchmark ({sc.get('name')} scale)\n\n"
            f"`{results.get('command')}` on {m.get('platform')}, {m.get('cpus')} CPUs, "
            f"{(m.get('mem_bytes') or 0) / 2**30:.0f} GiB, mlx {m.get('mlx')} ({m.get('device')}), "
            f"mlx-lm {m.get('mlx_lm')}, git {m.get('git')}, {m.get('date')}.\n"
            f"Model: random-weight qwen3_moe, {sc.get('layers')} layers, {sc.get('experts')} experts "
            f"top-{sc.get('top_k')}, hidden {sc.get('hidden')}, expert intermediate "
            f"{sc.get('moe_intermediate')}, vocab {sc.get('vocab')}, 4-bit g64, "
            f"{sc.get('scale_dtype')} scales; routing replayed from "
            f"{Path(results.get('trace', '')).name}.\n\n```\n{full_report(results)}\n```\n")


@click.command("all")
@click.option("--quick", is_flag=True, help="Every target at reduced scale (8 layers; < 20 min).")
@click.option("--scale", "scale_name", type=click.Choice(sorted(SCALES)), default=None,
              help="Scale preset (default: full, or quick with --quick).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where latest.json, latest.md and the PNG go (default: a new bench/results/all-<UTC time>/; "
                   "never the committed bench/results/latest.*).")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Scratch for generated models and stores (default bench/work/<scale>).")
@click.option("--trace", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Routing trace to replay (default: the bundled qwen3-30b-a3b trace).")
@click.option("--only", default=",".join(STAGES), show_default=True,
              help="Comma-separated stages to run.")
def command(quick: bool, scale_name: str | None, out: str | None, work: str | None, trace: str | None,
            only: str) -> None:  # fmt: skip
    """Measure P1-P8 side by side; write latest.json, a table and a PNG."""
    name = scale_name or ("quick" if quick else "full")
    stages = tuple(s for s in only.split(",") if s)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise click.BadParameter(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    out = out or str(new_result("all", suffix=""))
    trace_path = Path(trace) if trace else default_trace()
    t0 = time.perf_counter()
    results = run_all(name, Path(out), Path(work) if work else REPO / "bench" / "work" / name, trace_path,
                      stages, echo=lambda m: click.echo(m, err=True))  # fmt: skip
    click.echo(full_report(results))
    click.echo(f"\n{name} scale, {time.perf_counter() - t0:.0f} s; wrote {Path(out) / 'latest.json'}, latest.md"
               + (f" and {results['png']}" if results.get("png") else ""))

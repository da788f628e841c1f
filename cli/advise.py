"""`mlxstore plan STORE --trace FILE`: the flags and printing of the routing advisor (moe.advisor)."""

from __future__ import annotations

import click

from .options import Size


def trace_options(command):
    """The advisor's flags, added to `mlxstore plan`."""
    options = [
        click.option("--trace", "trace", default=None,
                     help="Route trace to replay: a file (`generate --record-trace`), or a bundled one by name "
                          "(qwen3-30b-a3b, gpt-oss-120b)."),
        click.option("--png", type=click.Path(dir_okay=False, writable=True), default=None,
                     help="Draw hit rate and predicted tok/s against the budget, knee marked (needs mlxstore[plot])."),
        click.option("--policies", default=None,
                     help="Comma-separated slot policies to replay (default: all, and belady, the optimum)."),
        click.option("--budgets", default=None,
                     help="Comma-separated budgets, e.g. 8GB,12GB (default: --points from the minimum to all experts)."),
        click.option("--points", type=click.IntRange(min=2), default=12, show_default=True,
                     help="Budgets replayed when --budgets is not given."),
        click.option("--scenario", type=click.Choice(["warm", "gen", "all"]), default="warm", show_default=True,
                     help="warm: the prompt warms the cache, decode counts; gen: decode rows only; all: every row counts."),
        click.option("--disk-gbps", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Disk read speed in GB/s (default: a short probe reads random experts of the store)."),
        click.option("--resident-ms", type=click.FloatRange(min=0), default=None,
                     help="Compute time per token with every expert resident, in ms (default: reads only)."),
        click.option("--probe-seconds", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                     help="Time cap of the read probe."),
        click.option("--json", "json_out", type=click.Path(dir_okay=False, writable=True), default=None,
                     help="Write every row as JSON."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


TRACE_FLAGS = ("png", "policies", "budgets", "points", "scenario", "disk_gbps", "resident_ms", "probe_seconds",
               "json_out")  # fmt: skip


def show_advice(store_path: str, kw: dict, *, max_context: int | None = None, headroom=None) -> None:
    """Replay kw["trace"] on the store at each budget and print the table (one-line errors)."""
    import json

    import mlxstore
    from mlxstore.formats import StoreError
    from mlxstore.formats.route_trace import load_route_trace
    from mlxstore.moe.advisor import (
        OPTIMUM,
        AdviseOptions,
        advise_store,
        format_advice,
        plot_advice,
    )
    from mlxstore.moe.policy import POLICIES
    from mlxstore.sizes import format_size
    from mlxstore.traces import find_trace, trace_name

    size = Size()
    try:
        path = find_trace(kw["trace"])
        trace = load_route_trace(path)
        budgets = tuple(size.convert(b.strip(), None, None) for b in kw["budgets"].split(",") if b.strip()) \
            if kw.get("budgets") else None  # fmt: skip
        policies = tuple(p.strip() for p in kw["policies"].split(",") if p.strip()) if kw.get("policies") \
            else tuple(POLICIES) + (OPTIMUM,)  # fmt: skip
        options = AdviseOptions(policies=policies, budgets=budgets, points=kw.get("points") or 12,
                                scenario=kw.get("scenario") or "warm", disk_gbps=kw.get("disk_gbps"),
                                compute_ms=kw.get("resident_ms"), probe_seconds=kw.get("probe_seconds") or 1.0)  # fmt: skip
        with mlxstore.open(store_path) as store:
            advice = advise_store(store, trace, options, name=trace_name(path), max_context=max_context,
                                  headroom=headroom)  # fmt: skip
        click.echo(format_advice(advice))
        if advice.knee is not None:
            k = advice.knee
            speed = f", {k.tok_s:.2f} tok/s predicted" if k.tok_s is not None else ""
            click.echo(f"knee ({advice.default_policy}): {format_size(k.budget)}, {k.slots} slots per layer, "
                       f"hit rate {k.hit_rate:.3f}{speed}")  # fmt: skip
        if kw.get("png"):
            plot_advice(advice, kw["png"])
            click.echo(f"wrote {kw['png']}")
        if kw.get("json_out"):
            with open(kw["json_out"], "w") as f:
                json.dump(advice.as_dict(), f, indent=1)
            click.echo(f"wrote {kw['json_out']}")
    except click.BadParameter as e:
        raise click.ClickException(f"--budgets: {e.message}") from None
    except (StoreError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename or ''}: {e.strerror or e}") from None

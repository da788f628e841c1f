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
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


TRACE_FLAGS = ("trace", "png", "policies", "budgets", "points", "scenario", "disk_gbps", "resident_ms",
               "probe_seconds")  # fmt: skip


def advice_of(source: str, flags: dict, budget: str | None = None, **plan_kw):
    """Replay flags["trace"] on SOURCE (a store, or a config: then --disk-gbps is needed) at
    each budget, the plan made with `plan_kw`; `budget` (--memory-budget) gets a row too.
    Raises click.ClickException with a one-line message."""
    from mlxstore.formats import StoreError
    from mlxstore.formats.route_trace import load_route_trace
    from mlxstore.moe.advisor import OPTIMUM, AdviseOptions, advise_model, budget_range
    from mlxstore.moe.policy import POLICIES
    from mlxstore.moe.spec import from_config, from_store, read_config
    from mlxstore.sizes import parse_size
    from mlxstore.store import open as open_store
    from mlxstore.traces import find_trace, trace_name

    size = Size()
    plan_kw = {k: v for k, v in plan_kw.items() if v is not None}
    try:
        path = find_trace(flags["trace"])
        trace = load_route_trace(path)
        budgets = tuple(size.convert(b.strip(), None, None) for b in flags["budgets"].split(",") if b.strip()) \
            if flags.get("budgets") else None  # fmt: skip
        policies = tuple(p.strip() for p in flags["policies"].split(",") if p.strip()) if flags.get("policies") \
            else tuple(POLICIES) + (OPTIMUM,)  # fmt: skip
        options = AdviseOptions(policies=policies, points=flags.get("points") or 12,
                                scenario=flags.get("scenario") or "warm", disk_gbps=flags.get("disk_gbps"),
                                compute_ms=flags.get("resident_ms"), probe_seconds=flags.get("probe_seconds") or 1.0)  # fmt: skip
        found = read_config(source)
        store = open_store(source) if found is None else None
        try:
            spec = from_store(store) if store is not None else from_config(*found)
            if budgets is None:
                budgets = budget_range(spec, options.points, **plan_kw)
                if budget is not None:
                    try:
                        spec.plan(budget, **plan_kw)
                        budgets = sorted({*budgets, parse_size(budget)})
                    except StoreError:
                        pass  # below the minimum: the plan above says so
            options = AdviseOptions(**{**options.__dict__, "budgets": tuple(budgets)})
            return advise_model(spec, trace, options, store=store, name=trace_name(path), **plan_kw)
        finally:
            if store is not None:
                store.close()
    except click.BadParameter as e:
        raise click.ClickException(f"--budgets: {e.message}") from None
    except (StoreError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename or ''}: {e.strerror or e}") from None


def print_advice(advice, png: str | None = None) -> None:
    """The advisor's table, its knee, and the plot when asked for."""
    from mlxstore.moe.advisor import format_advice
    from mlxstore.sizes import format_size

    click.echo(format_advice(advice))
    if advice.knee is not None:
        k = advice.knee
        speed = f", {k.tok_s:.2f} tok/s predicted" if k.tok_s is not None else ""
        click.echo(f"knee ({advice.default_policy}): {format_size(k.budget)}, {k.slots} slots per layer, "
                   f"hit rate {k.hit_rate:.3f}{speed}")  # fmt: skip
    if png:
        draw(advice, png)
        click.echo(f"wrote {png}")


def draw(advice, png: str) -> None:
    from mlxstore.moe.advisor import plot_advice

    try:
        plot_advice(advice, png)
    except (ValueError, OSError) as e:
        raise click.ClickException(f"--png {png}: {e}") from None

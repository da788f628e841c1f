"""`mlxstore plan SOURCE`: the memory plan a budget buys, before loading any weight."""

from __future__ import annotations

import click

from .advise import TRACE_FLAGS, advice_of, draw, print_advice, trace_options
from .options import SizeText, memory_options


def plan_summary(source: str, budget: str | None, **kw):
    """The `moe.spec.PlanSummary` of SOURCE (a store, a config.json or its directory, or a
    repo id in the local Hugging Face cache) at `budget`: `.spec` (a `ModelSpec`: dense
    bytes, bytes per expert slot, layers, experts, top-k, config), `.plan` (a `Plan`, or
    None with `.error`), `.minimum`, `.all_experts` (budgets in bytes) and `.auto` (the
    plan of `None` here). kw: max_context, headroom, prefill_step_size, kv_bits,
    kv_group_size, max_kv_size, prefetch, fill, staged_load_size. Raises
    click.ClickException with a one-line message."""
    from mlxstore.formats import StoreError
    from mlxstore.moe.spec import spec_of, summarize

    try:
        return summarize(spec_of(source), budget, **{k: v for k, v in kw.items() if v is not None})
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def print_summary(summary) -> None:
    """The human-readable report of a `PlanSummary`."""
    from mlxstore.sizes import format_size

    s, echo = summary.spec, click.echo
    echo(f"model        {s.source} ({s.model_type}; {s.quantization})")
    echo(f"dense        {format_size(s.dense_bytes)} (pinned: attention, embeddings, norms, routers, shared experts)")
    echo(f"experts      {s.num_experts} per layer x {s.num_layers} MoE layers, top-{s.top_k}: "
         f"{format_size(s.expert_bytes // s.num_layers)} per expert, {format_size(s.expert_bytes)} per slot "
         f"over all layers, {format_size(s.all_expert_bytes)} in all")  # fmt: skip
    p = summary.plan
    if p is None:
        echo(f"plan         none: {summary.error}")
    else:
        budget = format_size(p.budget) if p.budget is not None else "none (slots fixed)"
        echo(f"plan         budget {budget}")
        echo(f"  dense        {format_size(p.dense_bytes)}")
        echo(f"  experts      {p.slots_per_layer}/{p.num_experts} slots per layer "
             f"({p.slots_per_layer / p.num_experts:.0%} of experts) = {format_size(p.bank_bytes)}")  # fmt: skip
        echo(f"  KV cache     {format_size(p.kv_bytes)} at {p.max_context} tokens")
        echo(f"  activations  {format_size(p.activation_bytes)} at prefill step {p.prefill_step_size}")
        echo(f"  headroom     {format_size(p.headroom_bytes)}")
        if p.reserved_bytes:
            echo(f"  reserved     {format_size(p.reserved_bytes)}")
        if p.staging_bytes:
            echo(f"  staging      {format_size(p.staging_bytes)} (host buffers misses are read into: staged fill, read-ahead)")
        echo(f"  total        {format_size(p.total_bytes)}")
    echo(f"minimum      {_size(summary.minimum)} (top-{s.top_k} slots per layer, smallest prefill step that fits)")
    echo(f"all experts  {_size(summary.all_experts)} (every expert resident, nothing streams)")
    auto = summary.auto
    if auto is None:
        echo("auto (None)  this machine's available memory is below the minimum")
    else:
        echo(f"auto (None)  budget {format_size(auto.budget)} (available memory now): "
             f"{auto.slots_per_layer}/{auto.num_experts} slots per layer, prefill step {auto.prefill_step_size}")  # fmt: skip


def _size(n: int | None) -> str:
    from mlxstore.sizes import format_size

    return format_size(n) if n is not None else "over 1 PiB"


def plan_options(command):
    """The flags of `plan` (kept together so commands built on it can share them)."""
    options = [
        click.argument("source", type=str),
        click.option("--memory-budget", type=SizeText(), default=None,
                     help="Whole MLX footprint, e.g. 8GB; default: this machine's available memory."),
        click.option("--max-context", type=click.IntRange(min=1), default=None,
                     help="KV cache tokens the budget reserves (default as generate's)."),
        click.option("--headroom", type=SizeText(), default=None,
                     help="Bytes kept free for MLX's allocator (default 5%, at least 64 MiB)."),
        click.option("--prefill-step-size", type=click.IntRange(min=1), default=None,
                     help="Force the prompt tokens per forward pass (default: the largest that fits)."),
        click.option("--kv-bits", type=click.IntRange(1, 8), default=None, help="Plan a quantized KV cache."),
        click.option("--kv-group-size", type=click.IntRange(min=1), default=None, help="Group size of KV quantization."),
        click.option("--max-kv-size", type=click.IntRange(min=1), default=None, help="Plan a rotating KV cache."),
        *memory_options(),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@trace_options
def plan(source, memory_budget, as_json, **kw) -> None:
    """Print the memory plan of SOURCE without loading weights: a store, a config.json (or
    its directory), or a repo id whose config.json is in the local Hugging Face cache.

    Shows dense bytes, slots per layer, KV cache, activations, headroom and prefill step
    at the budget, the minimum budget, the budget at which every expert fits, and what
    the default (no budget) picks on this machine.

    With --trace, replays that routing through every slot policy at a range of budgets:
    hit rate, expert MB missed per token and predicted tok/s (see README, "What a budget
    buys, from real routing")."""
    flags = {k: kw.pop(k) for k in TRACE_FLAGS}
    given = [f"--{k.replace('_', '-')}" for k in ("png", "budgets", "policies", "disk_gbps", "resident_ms")
             if flags[k] is not None]  # fmt: skip
    if given and not flags["trace"]:
        raise click.UsageError(f"{', '.join(given)} need --trace FILE")
    summary = plan_summary(source, memory_budget, **kw)
    advice = advice_of(source, flags, memory_budget, **kw) if flags["trace"] else None
    if as_json:
        import json
        from dataclasses import asdict

        def plan_dict(p):
            return {**asdict(p), "bank_bytes": p.bank_bytes, "total_bytes": p.total_bytes} if p else None

        data = {"spec": {k: v for k, v in asdict(summary.spec).items() if k != "config"},
                "plan": plan_dict(summary.plan), "error": summary.error, "minimum": summary.minimum,
                "all_experts": summary.all_experts, "auto": plan_dict(summary.auto)}  # fmt: skip
        if advice is not None:
            data["advice"] = advice.as_dict()
        click.echo(json.dumps(data, indent=2))
        if flags["png"] and advice is not None:
            draw(advice, flags["png"])
    else:
        print_summary(summary)
        if advice is not None:
            click.echo()
            print_advice(advice, flags["png"])

"""`mlxstore generate`: mlx_lm.generate's flags, experts streamed under a memory budget."""

from __future__ import annotations

import logging
import sys

import click


@click.command()
@click.option("--model", "model_path", required=True, help="Path of an mlxstore store.")
@click.option("--prompt", "-p", default="hello", show_default=True, help="Prompt text ('-' reads stdin).")
@click.option("--max-tokens", "-m", default=256, show_default=True)
@click.option("--temp", default=0.0, show_default=True, help="Sampling temperature.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=None, type=int)
@click.option("--system-prompt", default=None)
@click.option("--ignore-chat-template", is_flag=True, help="Use the raw prompt.")
@click.option("--memory-budget", default=None, help="e.g. 8GB; default plans from available memory.")
@click.option("--slots-per-layer", default=None, type=int, help="Fix the bank size (overrides the budget).")
@click.option("--max-context", default=4096, show_default=True, help="KV cache tokens the budget reserves.")
@click.option("--policy", default="default", show_default=True, help="Slot replacement policy.")
@click.option("--prefetch", type=click.Choice(["none", "temporal", "next-layer"]), default=None)
@click.option("--page-cache", type=click.Choice(["keep", "drop"]), default="drop", show_default=True)
@click.option("--check", is_flag=True, help="Verify the checksum of every expert read.")
def generate(model_path, prompt, max_tokens, temp, top_p, seed, system_prompt, ignore_chat_template,
             memory_budget, slots_per_layer, max_context, policy, prefetch, page_cache, check) -> None:  # fmt: skip
    """Generate text from a store, streaming experts; ends with one line of stats.

    Under `mlx.launch` the ranks run the model as a pipeline, each with its own budget;
    rank 0 prints the text.
    """
    import mlx.core as mx

    from mlxstore import moe
    from mlxstore.formats import StoreError
    from mlxstore.moe.generate import Summary, build_prompt, generate_text

    group = mx.distributed.init()
    rank = f"rank {group.rank()}: " if group.size() > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"{rank}%(message)s", stream=sys.stderr)
    try:
        model, tokenizer = moe.load(
            model_path, memory_budget, slots_per_layer=slots_per_layer, max_context=max_context,
            policy=policy, prefetch=prefetch or moe.DEFAULT_PREFETCH, page_cache=page_cache, check=check,
            group=group,
        )  # fmt: skip
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if prompt == "-":
        prompt = sys.stdin.read()
    ids = build_prompt(tokenizer, prompt, chat_template=not ignore_chat_template, system_prompt=system_prompt)
    summary = Summary()
    printing = group.rank() == 0
    try:
        for text in generate_text(model, tokenizer, ids, max_tokens=max_tokens, temp=temp, top_p=top_p,
                                  seed=seed, summary=summary):  # fmt: skip
            if printing:
                click.echo(text, nl=False)
        moe.pipeline.barrier(group)
    except RuntimeError as e:  # a peer rank died: MLX's backends report it as RuntimeError
        raise click.ClickException(f"{rank}generation stopped: {e}") from None
    if printing:
        click.echo()
    click.echo(f"{rank}{summary.line()}", err=True)

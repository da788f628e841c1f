"""`mlxstore chat`: an interactive chat like mlx_lm.chat, experts streamed from a store."""

from __future__ import annotations

import logging
import sys

import click

from .options import generate_default, load_options, load_store, option, prefill_step


@click.command()
@load_options
@option("--max-tokens", "-m", default=generate_default("max_tokens"), show_default=True, type=click.IntRange(min=1), help="Tokens per answer at most.")
@option("--temp", default=generate_default("temp"), show_default=True, type=click.FloatRange(min=0), help="Sampling temperature (0: greedy).")
@option("--top-p", default=generate_default("top_p"), show_default=True, type=click.FloatRange(0, 1), help="Nucleus sampling top-p.")
@click.option("--seed", default=0, show_default=True, type=int, help="PRNG seed.")
@click.option("--system-prompt", default=None, help="System message for the chat template.")
@click.option("--max-kv-size", default=None, type=click.IntRange(min=1), help="Rotating KV cache of this many tokens.")
def chat(max_tokens, temp, top_p, seed, system_prompt, max_kv_size, **load_kw) -> None:
    """Chat with STORE on stdin/stdout (q quits, r resets, h helps); the prompt cache is
    kept across turns and each turn ends with one stats line on stderr."""
    from mlxstore.formats import StoreError
    from mlxstore.moe.chat import HELP, chat_loop

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    load_kw["max_kv_size"] = max_kv_size
    model, tokenizer, name, _ = load_store(load_kw)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"[{name}] {HELP}")

    def lines():
        while True:
            if interactive:
                click.echo(">> ", nl=False)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    try:
        chat_loop(model, tokenizer, lines(), lambda s: click.echo(s, nl=False), lambda s: click.echo(s, err=True),
                  system_prompt=system_prompt, max_kv_size=max_kv_size, max_tokens=max_tokens, temp=temp,
                  top_p=top_p, seed=seed, prefill_step_size=prefill_step(model, load_kw["prefill_step_size"]))  # fmt: skip
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None

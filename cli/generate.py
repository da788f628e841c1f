"""`mlxstore generate`: mlx_lm.generate's flags, experts streamed under a memory budget."""

from __future__ import annotations

import logging
import sys

import click

from .options import (
    check_trace_target,
    generate_default,
    load_options,
    load_store,
    option,
    prefill_step,
    start_recording,
    stop_recording,
)


@click.command()
@load_options
@click.option("--prompt", "-p", default="hello", show_default=True, help="Prompt text ('-' reads stdin).")
@option("--max-tokens", "-m", default=generate_default("max_tokens"), show_default=True, type=click.IntRange(min=1), help="Tokens to generate at most.")
@option("--temp", default=generate_default("temp"), show_default=True, type=click.FloatRange(min=0), help="Sampling temperature (0: greedy).")
@option("--top-p", default=generate_default("top_p"), show_default=True, type=click.FloatRange(0, 1), help="Nucleus sampling top-p.")
@option("--top-k", default=generate_default("top_k"), show_default=True, type=click.IntRange(min=0), help="Top-k sampling (0: off).")
@option("--min-p", default=generate_default("min_p"), show_default=True, type=click.FloatRange(0, 1), help="Min-p sampling (0: off).")
@click.option("--seed", default=None, type=int, help="PRNG seed.")
@click.option("--system-prompt", default=None, help="System message for the chat template.")
@click.option("--ignore-chat-template", is_flag=True, help="Use the raw prompt.")
@click.option("--draft-model", default=None, help="Store or mlx-lm model directory for speculative decoding.")
@click.option("--num-draft-tokens", default=3, show_default=True, type=click.IntRange(min=1), help="Tokens the draft model proposes per step.")
@click.option("--kv-bits", default=None, type=click.IntRange(1, 8), help="Quantize the KV cache to this many bits.")
@click.option("--kv-group-size", default=64, show_default=True, type=click.IntRange(min=1), help="Group size of KV quantization.")
@click.option("--max-kv-size", default=None, type=click.IntRange(min=1), help="Rotating KV cache of this many tokens.")
@click.option("--record-trace", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the expert ids of every token and MoE layer to this route-trace CSV (for `mlxstore plan --trace`).")
def generate(prompt, max_tokens, temp, top_p, top_k, min_p, seed, system_prompt, ignore_chat_template, draft_model,
             num_draft_tokens, record_trace, **load_kw) -> None:  # fmt: skip
    """Generate text from a store, streaming experts; ends with one line of stats.

    Under `mlx.launch` the ranks run the model as a pipeline, each with its own budget;
    rank 0 prints the text.
    """
    import mlx.core as mx

    from mlxstore import moe
    from mlxstore.formats import ChecksumError, StoreError
    from mlxstore.moe.generate import Summary, build_prompt, generate_text, load_draft

    group = mx.distributed.init()
    rank = f"rank {group.rank()}: " if group.size() > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"{rank}%(message)s", stream=sys.stderr)
    kv_bits, kv_group_size, max_kv_size = load_kw["kv_bits"], load_kw["kv_group_size"], load_kw["max_kv_size"]
    if record_trace and group.size() > 1:
        raise click.ClickException("--record-trace records one process's layers; run it without mlx.launch")
    if record_trace:
        check_trace_target(record_trace)  # before the load: a refused path fails fast
    model, tokenizer, name, _ = load_store(load_kw, group=group)
    draft = load_draft(draft_model) if draft_model else None
    if prompt == "-":
        prompt = sys.stdin.read()
    ids = build_prompt(tokenizer, prompt, chat_template=not ignore_chat_template, system_prompt=system_prompt)
    limit = load_kw["max_context"]
    if load_kw["past_max_context"] == "stop":  # the plan reserved KV for max_context tokens: stop there
        if len(ids) >= limit:
            raise click.ClickException(f"prompt is {len(ids)} tokens; --max-context is {limit} (the KV cache the "
                                       "memory plan reserved): raise it, or --past-max-context warn")  # fmt: skip
        if len(ids) + max_tokens > limit:
            logging.getLogger("mlxstore").warning(
                "mlxstore: generation stops at --max-context %d: %d new tokens at most", limit, limit - len(ids))
            max_tokens = limit - len(ids)
    summary = Summary()
    options = dict(max_tokens=max_tokens, temp=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed,
                   draft_model=draft, num_draft_tokens=num_draft_tokens, kv_bits=kv_bits,
                   kv_group_size=kv_group_size, max_kv_size=max_kv_size,
                   prefill_step_size=prefill_step(model, load_kw["prefill_step_size"]))  # fmt: skip
    printing = group.rank() == 0
    recorder = start_recording(model, record_trace, name) if record_trace else None
    try:
        for text in generate_text(model, tokenizer, ids, summary=summary, **options):
            if printing:
                click.echo(text, nl=False)
        moe.pipeline.barrier(group)
    except ChecksumError as e:
        from mlxstore.formats import StoreReader
        from mlxstore.formats.reader import piece_file

        with StoreReader(load_kw["model_path"]) as r:
            files = sorted({f for what in e.names if (f := piece_file(r.index, what))})
        raise click.ClickException(f"{e} in file {', '.join(files) or '?'} of {load_kw['model_path']}") from None
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except RuntimeError as e:  # a peer rank died: MLX's backends report it as RuntimeError
        raise click.ClickException(f"{rank}generation stopped: {e}") from None
    finally:
        if recorder is not None:
            stop_recording(model, recorder)
    if printing:
        click.echo()
    click.echo(f"{rank}{summary.line()}", err=True)

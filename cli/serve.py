"""`mlxstore serve`: an OpenAI- and Anthropic-compatible HTTP server over a store."""

from __future__ import annotations

import logging
import sys

import click

from .options import (
    Size,
    check_trace_target,
    load_options,
    load_store,
    option,
    prefill_step,
    serve_default,
    start_recording,
    stop_recording,
)


@click.command()
@load_options
@option("--host", default=serve_default("host"), show_default=True, help="Address to listen on (keep 127.0.0.1 unless you mean to share it).")
@option("--port", default=serve_default("port"), show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port, printed at start).")
@option("--queue-size", default=serve_default("queue_size"), show_default=True, type=click.IntRange(min=0), help="Requests that may wait behind the running one(s); more get 503 with Retry-After.")
@option("--max-tokens", "-m", default=serve_default("max_tokens"), show_default=True, type=click.IntRange(min=1), help="Default tokens per answer when a request gives none.")
@option("--temp", default=serve_default("temp"), show_default=True, type=click.FloatRange(min=0), help="Default sampling temperature.")
@option("--top-p", default=serve_default("top_p"), show_default=True, type=click.FloatRange(0, 1), help="Default nucleus sampling top-p.")
@option("--top-k", default=serve_default("top_k"), show_default=True, type=click.IntRange(min=0), help="Default top-k (0: off).")
@option("--min-p", default=serve_default("min_p"), show_default=True, type=click.FloatRange(0, 1), help="Default min-p (0: off).")
@click.option("--prompt-cache-bytes", type=Size(), default=None, help="Prefix cache across requests, reserved in the memory plan (default: one KV cache at --max-context; 0: off).")
@option("--prompt-cache-size", default=serve_default("prompt_cache_size"), show_default=True, type=click.IntRange(min=1), help="Distinct sequences the prefix cache keeps.")
@click.option("--record-trace", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the expert ids of every token and MoE layer to this route-trace CSV (one turn per request).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO", show_default=True)
def serve(host, port, queue_size, max_tokens, temp, top_p, top_k, min_p, prompt_cache_bytes, prompt_cache_size,
          record_trace, log_level, **load_kw) -> None:  # fmt: skip
    """Serve STORE over HTTP: /v1/chat/completions, /v1/completions, /v1/models (OpenAI)
    and /v1/messages (Anthropic), with mlx_lm.server's request handling."""
    from mlxstore.moe.server import ServeOptions, make_server
    from mlxstore.moe.server import serve as run

    logging.basicConfig(level=getattr(logging, log_level), format="%(asctime)s %(message)s", stream=sys.stderr)
    if record_trace:
        check_trace_target(record_trace)  # before the load: a refused path fails fast
    model, tokenizer, name, reserved = load_store(load_kw, prompt_cache_bytes)
    options = ServeOptions(host=host, port=port, queue_size=queue_size, max_context=load_kw["max_context"],
                           max_tokens=max_tokens, temp=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                           prompt_cache_size=prompt_cache_size, prompt_cache_bytes=reserved,
                           prefill_step_size=prefill_step(model, load_kw["prefill_step_size"]))  # fmt: skip
    try:
        httpd, state = make_server(model, tokenizer, name, options)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    logging.getLogger("mlxstore").info("mlxstore serve: %s mode", state.mode)
    recorder = start_recording(model, record_trace, name) if record_trace else None
    try:
        run(httpd, state, announce=lambda s: click.echo(s, err=False) or sys.stdout.flush())
    finally:
        if recorder is not None:
            stop_recording(model, recorder)

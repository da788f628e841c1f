"""`mlxstore demo`: the README's main job, nothing downloaded."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the model and store here (default: a temporary directory).")  # fmt: skip
@click.option("--max-tokens", default=24, show_default=True, help="Tokens to generate.")
def demo(workdir: Path | None, max_tokens: int) -> None:
    """Build a small random MoE model, pack it, stream it under a budget smaller than
    the model, and check it against resident mlx-lm."""
    from mlxstore.moe.demo import run_demo
    from mlxstore.sizes import format_size

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="mlxstore-demo-") as tmp:
        r = run_demo(Path(workdir or tmp), max_tokens=max_tokens, say=lambda s: click.echo(f"- {s}"))
    click.echo(f"generated (streamed): {r.text!r}")
    click.echo(
        f"model {format_size(r.model_bytes)} ({format_size(r.expert_bytes)} experts) under a "
        f"{format_size(r.budget)} budget: {r.slots_per_layer}/{r.num_experts} expert slots per layer, "
        f"{r.misses} expert reads ({format_size(r.bytes_read)}), hit rate {r.hit_rate:.1%}"
    )
    click.echo(f"tokens identical to mlx_lm.load: {r.tokens_match}; logits bit-identical: {r.logits_match}")
    if not (r.tokens_match and r.logits_match):
        raise SystemExit(1)

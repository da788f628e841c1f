"""`python -m bench genmodel`: the command of bench/harness/genmodel.py."""

from __future__ import annotations

import click

from bench.harness.genmodel import QWEN3_30B_A3B, expert_usage, make_config, write_model


@click.command("genmodel")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--layers", default=QWEN3_30B_A3B["layers"], show_default=True)
@click.option("--experts", default=QWEN3_30B_A3B["experts"], show_default=True)
@click.option("--top-k", default=QWEN3_30B_A3B["top_k"], show_default=True)
@click.option("--hidden", default=QWEN3_30B_A3B["hidden"], show_default=True)
@click.option("--moe-intermediate", default=QWEN3_30B_A3B["moe_intermediate"], show_default=True)
@click.option("--intermediate", default=QWEN3_30B_A3B["intermediate"], show_default=True)
@click.option("--heads", default=QWEN3_30B_A3B["heads"], show_default=True)
@click.option("--kv-heads", default=QWEN3_30B_A3B["kv_heads"], show_default=True)
@click.option("--head-dim", default=QWEN3_30B_A3B["head_dim"], show_default=True)
@click.option("--vocab", default=QWEN3_30B_A3B["vocab"], show_default=True)
@click.option("--gate-bits", default=8, show_default=True, type=click.Choice(["4", "8"]),
              help="Router bits (mlx-lm's converter uses 8 for qwen3_moe).")
@click.option("--scale-dtype", default="bfloat16", show_default=True,
              type=click.Choice(["bfloat16", "float32"]),
              help="dtype of scales, biases and norms (torch_dtype).")
@click.option("--shard-size", default="5G", show_default=True, help="Max bytes per shard.")
@click.option("--seed", default=0, show_default=True)
@click.option("--usage", "usage_tokens", default=0, show_default=True,
              help="Then run this many random tokens and print distinct experts per layer.")
def command(out: str, layers: int, experts: int, top_k: int, hidden: int, moe_intermediate: int,
            intermediate: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
            gate_bits: str, scale_dtype: str, shard_size: str, seed: int,
            usage_tokens: int) -> None:
    """Write a random-weight qwen3_moe model (Qwen3-30B-A3B shape by default) to OUT."""
    from mlxstore.sizes import parse_size

    try:
        config = make_config(layers, experts, top_k, hidden, moe_intermediate, intermediate,
                             heads, kv_heads, head_dim, vocab, int(gate_bits), scale_dtype)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    info = write_model(out, config, seed, parse_size(shard_size))
    click.echo(f"wrote {info['dir']}: {info['bytes'] / 2**30:.2f} GiB in {info['shards']} shards, "
               f"{info['tensors']} tensors, {info['seconds']:.1f}s "
               f"({info['bytes'] / 2**20 / max(info['seconds'], 1e-9):.0f} MiB/s)")
    if usage_tokens:
        used = expert_usage(out, usage_tokens, seed)
        click.echo(f"distinct experts per layer over {usage_tokens} tokens (top-{top_k} of "
                   f"{experts}): {used}; min {min(used)} mean {sum(used) / len(used):.1f} "
                   f"max {max(used)}")

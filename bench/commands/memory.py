"""`python -m bench memory`: peak MLX memory and peak RSS against the budget, by prompt length.

A random-weight qwen3_moe model (float32 scales: the MLX CPU backend computes bfloat16
slowly) is packed and streamed under the least budget whose plan holds a quarter of each layer's experts (with
KV at --max-context, activations at the prefill step the plan picks, default headroom). Each prompt length runs
in a fresh process (peak RSS only grows within a process): it loads, resets MLX's peak,
generates NEW_TOKENS greedy tokens with `mlx_lm.stream_generate` at the plan's step, and
reports `mx.get_peak_memory()`, the peak RSS (`VmHWM`, Linux), and RSS right after load.
RSS minus MLX memory is what the process adds outside the budget (Python, libraries,
the tokenizer, MLX's cache of freed buffers).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

CONFIG = {"num_hidden_layers": 4, "num_experts": 32, "num_experts_per_tok": 4, "hidden_size": 256,
          "moe_intermediate_size": 512, "intermediate_size": 512, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 16384}  # fmt: skip
NEW_TOKENS = 8


def _budget(store: str, max_context: int) -> int:
    """The least budget (to 1 MiB) whose plan holds a quarter of each layer's experts."""
    from mlxstore.moe.plan import smallest_budget
    from mlxstore.moe.spec import spec_of

    spec = spec_of(store)
    return smallest_budget(lambda b: spec.plan(b, max_context=max_context),
                           lambda p: p.slots_per_layer >= p.num_experts // 4)  # fmt: skip


def _hwm() -> int:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss, not inherited from the parent at fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _one(store: str, budget: int, max_context: int, tokens: int) -> dict:
    """One prompt length, in this (fresh) process."""
    import mlx.core as mx
    import mlx_lm
    import numpy as np

    from mlxstore import moe

    model, tokenizer = moe.load(store, budget, max_context=max_context)
    plan = moe.plan_of(model)
    rss_loaded = _hwm()
    prompt = [int(t) for t in np.random.default_rng(tokens).integers(3, CONFIG["vocab_size"] - 1, size=tokens)]
    mx.clear_cache()
    mx.reset_peak_memory()
    start = time.perf_counter()
    for _ in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=NEW_TOKENS,
                                    prefill_step_size=plan.prefill_step_size):  # fmt: skip
        pass
    return {"prompt_tokens": tokens, "seconds": round(time.perf_counter() - start, 2),
            "peak_mlx": mx.get_peak_memory(), "cache_mlx": mx.get_cache_memory(),
            "peak_rss": _hwm(), "rss_after_load": rss_loaded,
            "plan": plan.describe(), "plan_total": plan.total_bytes, "prefill_step": plan.prefill_step_size,
            "slots_per_layer": plan.slots_per_layer, "num_experts": plan.num_experts}  # fmt: skip


def run(lengths: list[int], max_context: int, root: Path) -> dict:
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir

    src = make_model_dir("qwen3_moe", root / "src", dtype="float32", config_overrides=CONFIG, seed=5)
    store = str(pack(src, root / "model.store", progress=False))
    budget = _budget(store, max_context)
    rows = []
    for n in lengths:
        code = f"import json, bench.memory as m; print(json.dumps(m._one({store!r}, {budget}, {max_context}, {n})))"
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        click.echo(f"{n:>6} tokens: peak MLX {r['peak_mlx'] / 2**20:.1f} MiB, peak RSS {r['peak_rss'] / 2**20:.1f} MiB "
                   f"(budget {budget / 2**20:.1f} MiB), {r['seconds']} s", err=True)  # fmt: skip
    return {"budget": budget, "max_context": max_context, "new_tokens": NEW_TOKENS, "config": CONFIG,
            "machine": f"{platform.system()} {platform.machine()}, {_cores()} cores", "rows": rows}  # fmt: skip


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def table(result: dict) -> str:
    b = result["budget"]
    lines = ["| prompt tokens | prefill step | peak MLX MiB | peak MLX / budget | peak RSS MiB | RSS - peak MLX MiB | seconds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['prompt_tokens']} | {r['prefill_step']} | {r['peak_mlx'] / 2**20:.1f} | "
                     f"{r['peak_mlx'] / b:.2f} | {r['peak_rss'] / 2**20:.1f} | "
                     f"{(r['peak_rss'] - r['peak_mlx']) / 2**20:.1f} | {r['seconds']} |")  # fmt: skip
    return "\n".join(lines)


@click.command("memory")
@click.option("--lengths", default="1,512,2048,4096,8188", show_default=True, help="Prompt lengths, comma-separated.")
@click.option("--max-context", default=8196, show_default=True, type=int, help="KV tokens the plan reserves.")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="JSON results file (default: a new bench/results/memory-<time>.json).")
def command(lengths: str, max_context: int, out: Path | None) -> None:
    """Peak MLX memory and peak RSS against the budget for prompts up to 8k tokens."""
    wanted = [int(x) for x in lengths.split(",") if x.strip()]
    if any(n + NEW_TOKENS > max_context for n in wanted):
        raise click.ClickException(f"every prompt length + {NEW_TOKENS} new tokens must fit --max-context {max_context}")
    with tempfile.TemporaryDirectory(prefix="mlxstore-memory-") as tmp:
        result = run(wanted, max_context, Path(tmp))
    from bench.harness.results import new_result

    out = out or new_result("memory")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"budget {result['budget'] / 2**20:.1f} MiB, max_context {max_context}; {result['rows'][0]['plan']}")
    click.echo(table(result))
    click.echo(f"wrote {out}")

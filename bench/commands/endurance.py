"""`python -m bench endurance --tokens 10000`: a long streamed decode under a small budget.

A tiny random MoE model (qwen3_moe, 32 experts per layer) is packed and streamed with a
budget of dense weights plus a quarter of the experts, and decodes TOKENS tokens sampled at
temperature 1 (so routing keeps changing and the banks keep missing) with a rotating KV
cache (so the cache itself stops growing). Every SAMPLE_EVERY tokens it records RSS, MLX
active and cache memory, open descriptors, threads, and the streaming statistics.

Pass criteria after warm-up: RSS and MLX active memory within 5% (max over min), no growth in
descriptors or threads, and hits + misses = requests in every layer at every sample.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import click

from bench.harness.results import new_result

CONFIG = {"num_hidden_layers": 4, "num_experts": 32, "num_experts_per_tok": 4, "hidden_size": 256,
          "moe_intermediate_size": 256, "vocab_size": 512}  # fmt: skip


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample(model, tokens: int, start: float) -> dict:
    import mlx.core as mx

    from mlxstore import moe

    st = moe.stats(model)
    return {
        "tokens": tokens,
        "seconds": round(time.perf_counter() - start, 3),
        "rss": _rss(),
        "mlx_active": mx.get_active_memory(),
        "mlx_cache": mx.get_cache_memory(),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "tasks": len(os.listdir("/proc/self/task")),
        "requests": st.total.requests,
        "hits": st.total.hits,
        "misses": st.total.misses,
        "bytes_read": st.total.bytes_read,
        "stats_add_up": all(s.hits + s.misses == s.requests for s in st.layers.values()),
    }


def _spread(values: list[int]) -> float:
    return (max(values) - min(values)) / max(min(values), 1)


def run(tokens: int, warmup: int, every: int, max_kv: int, seed: int, root: Path) -> dict:
    import mlx.core as mx

    import mlxstore
    from mlxstore import moe
    from mlxstore.mlxlm import make_prompt_cache
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir

    src = make_model_dir("qwen3_moe", root / "src", config_overrides=CONFIG, seed=seed)
    store = pack(src, root / "store", progress=False)
    with mlxstore.open(store) as s:
        tensors = s.index.tensors
    expert = sum(t.nbytes for t in tensors.values() if t.expert_group)
    dense = sum(t.nbytes for t in tensors.values() if not t.expert_group)
    budget = dense + expert // 4
    model, _ = moe.load(store, memory_budget=budget, max_context=max_kv, headroom=1 << 20)
    plan = moe.plan_of(model)
    mx.random.seed(seed)
    cache = make_prompt_cache(model, max_kv_size=max_kv)
    logits = model(mx.array([[1, 17, 33, 65, 129, 257, 300, 400]]), cache=cache)[:, -1]
    samples, start = [], time.perf_counter()
    for i in range(1, tokens + 1):
        token = mx.random.categorical(logits)[None]
        logits = model(token, cache=cache)[:, -1]
        mx.eval(logits)
        if i % every == 0:
            samples.append(_sample(model, i, start))
    after = [s for s in samples if s["tokens"] > warmup]
    checks = {
        "rss_spread": _spread([s["rss"] for s in after]),
        "mlx_active_spread": _spread([s["mlx_active"] for s in after]),
        "fds_constant": len({s["fds"] for s in after}) == 1,
        "threads_constant": len({(s["threads"], s["tasks"]) for s in after}) == 1,
        "stats_add_up": all(s["stats_add_up"] for s in samples),
    }
    checks["passed"] = (checks["rss_spread"] <= 0.05 and checks["mlx_active_spread"] <= 0.05
                        and checks["fds_constant"] and checks["threads_constant"] and checks["stats_add_up"])  # fmt: skip
    last = samples[-1]
    return {
        "tokens": tokens, "warmup": warmup, "max_kv": max_kv, "budget": budget,
        "model_bytes": dense + expert, "slots_per_layer": plan.slots_per_layer, "num_experts": plan.num_experts,
        "tokens_per_second": tokens / last["seconds"], "hit_rate": last["hits"] / max(last["requests"], 1),
        "checks": checks, "samples": samples,
    }  # fmt: skip


@click.command("endurance")
@click.option("--tokens", default=10_000, show_default=True, help="Decode steps.")
@click.option("--warmup", default=1000, show_default=True, help="Tokens before memory must be flat.")
@click.option("--every", default=250, show_default=True, help="Sample every N tokens.")
@click.option("--max-kv", default=256, show_default=True, help="Rotating KV cache size.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON results (default: a new bench/results/endurance-<UTC time>.json; never the committed endurance.json).")  # fmt: skip
def command(tokens: int, warmup: int, every: int, max_kv: int, seed: int, out: Path | None) -> None:
    """Stream TOKENS decode steps under a small budget; memory, fds, threads must stay flat."""
    with tempfile.TemporaryDirectory(prefix="mlxstore-endurance-") as tmp:
        result = run(tokens, warmup, every, max_kv, seed, Path(tmp))
    out = out or new_result("endurance")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    c, s0, s1 = result["checks"], result["samples"][0], result["samples"][-1]
    click.echo(f"{result['tokens']} tokens at {result['tokens_per_second']:.0f} tok/s, "
               f"{result['slots_per_layer']}/{result['num_experts']} slots, hit rate {result['hit_rate']:.1%}, "
               f"{s1['misses']} misses, {s1['bytes_read'] / 2**20:.0f} MiB read")  # fmt: skip
    click.echo(f"after {result['warmup']} warm-up tokens: RSS spread {c['rss_spread']:.2%} "
               f"({s0['rss'] / 2**20:.1f} -> {s1['rss'] / 2**20:.1f} MiB), MLX active spread "
               f"{c['mlx_active_spread']:.2%} ({s1['mlx_active'] / 2**20:.2f} MiB), fds constant {c['fds_constant']} "
               f"({s1['fds']}), threads constant {c['threads_constant']} ({s1['threads']}), "
               f"stats add up {c['stats_add_up']}")  # fmt: skip
    click.echo(f"{'PASS' if c['passed'] else 'FAIL'}; samples in {out}")
    if not c["passed"]:
        raise SystemExit(1)

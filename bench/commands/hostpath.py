"""`python -m bench hostpath`: a streamed layer's own host work per call, compute stubbed out.

Why: on a GPU a layer's kernels take a fraction of a millisecond, so whatever Python does
between "router ids on the host" and "next kernels launched" is felt directly, while the
CPU backend's slow kernels hide it. Here the switch module inside StreamingExperts is
replaced by a stub that returns zeros of the right shape, so the time per call is the wrapper's own
work: ids to experts, the slot policy, slot ids, misses read (page cache warm), the
async launch. Router ids come from the real Qwen3 trace (128 experts, top-8 padded).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import mlx.core as mx
import numpy as np

from bench.harness.genmodel import make_config, write_model
from bench.harness.policy_sim import default_trace


def _calls(trace_path: Path, k: int, n: int) -> list[mx.array]:
    from mlxstore.formats.route_trace import load_route_trace
    from mlxstore.moe.replay import pad_rows

    trace = load_route_trace(trace_path)
    rows = pad_rows(trace.generation_calls(0), k, trace.n_expert, seed=0)
    out = [mx.array(rows[i % len(rows)].astype(np.uint32))[None, None] for i in range(n)]
    mx.eval(out)
    return out


def _time_calls(layer, x, calls, repeat: int) -> dict:
    from mlxstore import moe  # noqa: F401 - stats types

    bank = layer.bank
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        layer(x, calls[i % len(calls)])
        times.append(time.perf_counter() - t)
    st = bank.stats
    return {"median_us": float(np.median(times) * 1e6), "p90_us": float(np.percentile(times, 90) * 1e6),
            "host_us": st.host_seconds / max(1, st.calls) * 1e6, "hit_rate": st.hit_rate,
            "misses_per_call": st.misses / max(1, st.calls)}  # fmt: skip


def _time_copies(bank) -> list[float]:
    """Seconds of each staged copy queuing (`ExpertBank._copy_load`: building the MLX ops
    that copy a load into its slots, host work a GPU feels), appended to the list returned."""
    seconds: list[float] = []
    real = bank._copy_load

    def timed(buf, load):
        t = time.perf_counter()
        real(buf, load)
        seconds.append(time.perf_counter() - t)

    bank._copy_load = timed
    return seconds


@click.command("hostpath")
@click.option("--calls", "repeat", default=2000, show_default=True, help="Timed calls per configuration.")
@click.option("--trace", default=None, help="Routing trace (default: qwen3-30b-a3b.route.csv).")
@click.option("--out", default=None, help="JSON results file (default: a new bench/results/hostpath-<time>.json).")
def command(repeat: int, trace: str | None, out: str) -> None:
    """Per-call host time of a streamed MoE layer with its expert compute stubbed."""
    from bench.harness.worker import preload
    from mlxstore import moe
    from mlxstore.pack import pack

    work = Path(tempfile.mkdtemp(prefix="mlxstore-hostpath-"))
    config = make_config(layers=1, experts=128, top_k=8, hidden=256, moe_intermediate=128, intermediate=512,
                         heads=4, kv_heads=2, head_dim=64, vocab=1024)  # fmt: skip
    write_model(work / "model", config)
    store = pack(work / "model", work / "model.store", progress=False)
    calls = _calls(Path(trace) if trace else default_trace(), 8, 512)
    x = mx.zeros((1, 1, config["hidden_size"]), dtype=mx.bfloat16)
    zero = mx.zeros((), dtype=mx.bfloat16)
    mx.eval(x, zero)
    hidden = config["hidden_size"]
    rows = {}
    setups = {  # name: (slots, fill, preload, keep the host path, passes (None: by backend), staged copy, hits first)
        "every expert fits (identity, no sync)": (128, "direct", True, False, None, "slices", False),
        "100% hits, host path": (128, "direct", True, True, None, "slices", False),
        "25% slots, direct fill": (32, "direct", False, True, None, "slices", False),
        "25% slots, direct fill, full": (32, "direct", False, True, "full", "slices", False),
        "25% slots, direct fill, full, hits first": (32, "direct", False, True, "full", "slices", True),
        "25% slots, staged fill": (32, "staged", False, True, None, "slices", False),
        "25% slots, staged fill, scatter": (32, "staged", False, True, None, "scatter", False),
    }
    for name, (slots, fill, pre, host, passes, copy, hits_first) in setups.items():
        model, _ = moe.load(store, slots_per_layer=slots, fill=fill, page_cache="keep", passes=passes,
                            staged_copy=copy, hits_first=hits_first)  # fmt: skip
        if pre:
            preload(model)
        layer = next(m for _, m in model.named_modules() if hasattr(m, "bank"))
        if host:
            layer.bank.fixed_slots = None
        copy_seconds = _time_copies(layer.bank)
        layer.inner = lambda x, indices: mx.broadcast_to(zero, (*indices.shape, hidden))  # noqa: B023 - same for all
        _time_calls(layer, x, calls, 200)  # warm the page cache and the policy
        moe.reset_stats(model)
        copy_seconds.clear()
        rows[name] = _time_calls(layer, x, calls, repeat)
        rows[name]["copy_queue_us"] = sum(copy_seconds) / repeat * 1e6 if copy_seconds else 0.0
    header = (f"{'configuration':44s} {'median us':>10s} {'p90 us':>8s} {'host us':>8s} {'copy us':>8s} "
              f"{'hit rate':>8s} {'miss/call':>9s}")  # fmt: skip
    click.echo(header)
    for name, r in rows.items():
        click.echo(f"{name:44s} {r['median_us']:10.1f} {r['p90_us']:8.1f} {r['host_us']:8.1f} {r['copy_queue_us']:8.1f} "
                   f"{r['hit_rate']:8.3f} {r['misses_per_call']:9.2f}")  # fmt: skip
    from bench.harness.results import new_result

    out = out or str(new_result("hostpath"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"device": str(mx.default_device()), "calls": repeat, "rows": rows}, indent=1) + "\n")

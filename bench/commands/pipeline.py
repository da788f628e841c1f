"""`python -m bench pipeline`: one rank with budget B vs two pipelined ranks with B each.

Same store (experts 3x one rank's budget), same replayed routing trace, in one run: decode
tok/s, hit rate, expert bytes read per rank, and the time one token's hidden-state exchange
(send to the next rank + the all_gather every rank joins) takes on its own, per token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from bench.harness.policy_sim import default_trace
from bench.harness.results import REPO, new_result


def _model(root: Path) -> Path:
    """A qwen3_moe store with the trace's 128 experts, top-8, 8 layers (small matrices)."""
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir

    overrides = {"num_hidden_layers": 8, "hidden_size": 256, "num_experts": 128, "num_experts_per_tok": 8,
                 "moe_intermediate_size": 128, "intermediate_size": 256}  # fmt: skip
    src = make_model_dir("qwen3_moe", root / "src", config_overrides=overrides, dtype="float32", seed=3)
    return pack(src, root / "model.store", progress=False)


def worker(store: str, budget: int, trace: str, tokens: int, out: str) -> None:
    """One rank: load under `budget`, replay `trace`, decode `tokens` greedily, write figures."""
    import mlx.core as mx

    from mlxstore import moe
    from mlxstore.formats.route_trace import load_route_trace
    from mlxstore.moe import pipeline, replay

    group = mx.distributed.init()
    model, _ = moe.load(store, budget, max_context=256, headroom="4MiB", group=group)
    replay.replay(model, load_route_trace(trace))
    prompt = mx.array([[5, 6, 7, 8]])
    from mlxstore.mlxlm import make_prompt_cache

    cache = make_prompt_cache(model)
    token = mx.argmax(model(prompt, cache=cache)[:, -1:], axis=-1)
    mx.eval(token)
    moe.reset_stats(model)
    start = time.perf_counter()
    for _ in range(tokens):
        token = mx.argmax(model(token, cache=cache)[:, -1:], axis=-1)
        mx.eval(token)
    seconds = time.perf_counter() - start
    exchange = 0.0
    if group.size() > 1:  # one token's hidden state through the same send/recv + all_gather
        hidden = mx.zeros((1, 1, model.args.hidden_size), dtype=mx.float32)
        pipeline.barrier(group)
        t0 = time.perf_counter()
        for _ in range(tokens):
            h = hidden if group.rank() == 0 else mx.distributed.recv_like(hidden, group.rank() - 1, group=group)
            if group.rank() < group.size() - 1:
                h = mx.distributed.send(h, group.rank() + 1, group=group)
            mx.eval(mx.distributed.all_gather(h, group=group))
        exchange = (time.perf_counter() - t0) / tokens
    total = moe.stats(model).total
    pipeline.barrier(group)
    Path(f"{out}.{group.rank()}.json").write_text(json.dumps({
        "rank": group.rank(), "ranks": group.size(), "tok_s": tokens / seconds, "hit_rate": total.hit_rate,
        "bytes_read": total.bytes_read, "exchange_s": exchange, "peak": mx.get_peak_memory(),
        "slots": moe.plan_of(model).slots_per_layer}))  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(ranks: int, args: list[str]) -> None:
    cmd = [sys.executable, "-c", "import sys; from bench.commands.pipeline import worker; "
           "worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])", *args]  # fmt: skip
    if ranks > 1:
        cmd = ["mlx.launch", "-n", str(ranks), "--backend", "ring", "--starting-port", str(_port()), *cmd]
    subprocess.run(cmd, check=True, timeout=1800, cwd=REPO)


@click.command("pipeline")
@click.option("--store", default=None, help="Store to run (default: a generated 8-layer qwen3_moe).")
@click.option("--trace", default=None, help="Routing trace (default: the bundled qwen3-30b-a3b, "
              "or the one in MLXSTORE_TRACES).")  # fmt: skip
@click.option("--tokens", default=64, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="JSON results (default: a new bench/results/pipeline-<UTC time>.json; never the committed pipeline.json).")
def command(store, trace, tokens, out) -> None:
    """1 rank with budget B vs 2 pipelined ranks with B each; the experts are 3x B."""
    from mlxstore import open as open_store

    trace = trace or str(default_trace())
    with tempfile.TemporaryDirectory(prefix="mlxstore-pipe-") as tmp:
        root = Path(tmp)
        store = store or str(_model(root))
        with open_store(store) as s:
            experts = sum(t.nbytes for t in s.index.tensors.values() if t.expert_group is not None)
            dense = sum(t.nbytes for t in s.index.tensors.values() if t.expert_group is None)
        budget = experts // 3
        rows = []
        for ranks in (1, 2):
            out = str(root / f"r{ranks}")
            _run(ranks, [store, str(budget), trace, str(tokens), out])
            rows += [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(ranks)]
    click.echo(f"budget per rank {budget / 2**20:.1f} MiB, experts {experts / 2**20:.1f} MiB, dense {dense / 2**20:.1f} MiB, "
               f"{tokens} decode tokens")
    click.echo("| ranks | rank | slots/layer | tok/s | hit rate | MB read | exchange ms/token | peak MiB |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for r in rows:
        click.echo(f"| {r['ranks']} | {r['rank']} | {r['slots']} | {r['tok_s']:.2f} | {r['hit_rate']:.3f} | "
                   f"{r['bytes_read'] / 1e6:.1f} | {r['exchange_s'] * 1e3:.3f} | {r['peak'] / 2**20:.1f} |")  # fmt: skip
    out = Path(out or new_result("pipeline"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"budget": budget, "experts": experts, "tokens": tokens, "rows": rows,
                                   "machine": os.uname().nodename}, indent=2) + "\n")  # fmt: skip

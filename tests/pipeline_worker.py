"""One rank of a pipelined run (started by mlx.launch from test_pipeline.py).

Writes, per rank, the prompt + greedy decode logits, sampled tokens, peak MLX memory, the
plan's footprint and the streamed layers whose stats show reads.
"""

from __future__ import annotations

import json
import os
import sys

import mlx.core as mx
import numpy as np
from mlx_lm import stream_generate

from mlxstore import moe
from mlxstore.mlxlm import make_prompt_cache, make_sampler
from mlxstore.moe import pipeline


def logits_trace(model, prompt: mx.array, steps: int) -> list[np.ndarray]:
    cache = make_prompt_cache(model)
    logits = model(prompt, cache=cache)
    out = [np.array(logits.astype(mx.float32))]
    for _ in range(steps):
        logits = model(mx.argmax(logits[:, -1:], axis=-1), cache=cache)
        out.append(np.array(logits.astype(mx.float32)))
    return out


def main(store: str, out: str, slots: int, budget: str) -> None:
    group = mx.distributed.init()
    if store == "{missing}":  # test hook: rank 0 gets the real store, rank 1 a missing path
        store = os.environ["PIPELINE_TEST_STORE"] if group.rank() == 0 else store + "-missing"
    model, tokenizer = moe.load(store, budget, slots_per_layer=slots or None, group=group)
    if os.environ.get("PIPELINE_TEST_DIE") and group.rank() == 1:  # test hook: die after loading
        os._exit(3)
    prompt = mx.array(np.random.default_rng(0).integers(3, 512, size=(1, 12)), dtype=mx.int32)
    logits = logits_trace(model, prompt, steps=4)
    mx.random.seed(7)
    sampled = [r.token for r in stream_generate(model, tokenizer, prompt[0].tolist(), max_tokens=6,
                                                 sampler=make_sampler(temp=1.0))]  # fmt: skip
    unseeded = [r.token for r in stream_generate(model, tokenizer, prompt[0].tolist(), max_tokens=4,
                                                  sampler=make_sampler(temp=1.0))]  # fmt: skip
    pipeline.barrier(group)  # mlx-lm evaluates one step ahead: no rank leaves before the others
    read = sorted(name for name, s in moe.stats(model).layers.items() if s.requests)
    plan = moe.plan_of(model)
    np.savez(f"{out}.{group.rank()}.npz", *logits)
    with open(f"{out}.{group.rank()}.json", "w") as f:
        json.dump({"sampled": sampled, "unseeded": unseeded, "peak": mx.get_peak_memory(), "read": read,
                   "plan_total": plan.total_bytes if plan else None, "budget": plan.budget if plan else None}, f)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None)

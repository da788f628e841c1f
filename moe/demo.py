"""The README's main job: a small random MoE model, packed, streamed under a budget smaller
than the model, and checked token for token and logit for logit against resident mlx-lm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np

from mlxstore.mlxlm import make_prompt_cache
from mlxstore.pack import pack
from mlxstore.sizes import format_size
from mlxstore.store import open as open_store
from mlxstore.synth import make_model_dir

from .load import load, plan_of, stats

DEMO_ARCH = "qwen3_moe"
DEMO_MAX_CONTEXT = 256
DEMO_HEADROOM = "1MiB"
DEMO_CONFIG = {"num_hidden_layers": 4, "num_experts": 32, "num_experts_per_tok": 4,
               "hidden_size": 256, "moe_intermediate_size": 256, "vocab_size": 512}  # fmt: skip


@dataclass
class DemoResult:
    model_bytes: int
    expert_bytes: int
    budget: int
    slots_per_layer: int
    num_experts: int
    tokens_match: bool
    logits_match: bool
    text: str
    hit_rate: float
    misses: int
    bytes_read: int


def _greedy_logits(model, prompt: mx.array, steps: int) -> tuple[list[int], list[np.ndarray]]:
    cache = make_prompt_cache(model)
    logits = model(prompt[None], cache=cache)[:, -1]
    tokens, trace = [], []
    for _ in range(steps):
        trace.append(np.array(logits.astype(mx.float32)))
        token = int(mx.argmax(logits, axis=-1).item())
        tokens.append(token)
        logits = model(mx.array([[token]]), cache=cache)[:, -1]
    return tokens, trace


def run_demo(workdir: Path, *, max_tokens: int = 24, say: Callable[[str], None] = print) -> DemoResult:
    """Build, pack, stream, compare; `say` narrates each step."""
    src = workdir / "tiny-qwen3-moe"
    store_path = workdir / "tiny-qwen3-moe.mlxstore"
    if not (src / "config.json").exists():
        say(f"building a random-weight {DEMO_ARCH} model (mlx-lm's own classes, 4-bit) in {src}")
        make_model_dir(DEMO_ARCH, src, config_overrides=DEMO_CONFIG, seed=0)
    if not store_path.exists():
        say(f"packing it into {store_path}")
        pack(src, store_path, progress=False)
    store = open_store(store_path)
    tensors = store.index.tensors
    expert = sum(t.nbytes for t in tensors.values() if t.expert_group)
    dense = sum(t.nbytes for t in tensors.values() if not t.expert_group)
    budget = dense + expert // 4
    say(f"store: {format_size(dense)} dense + {format_size(expert)} experts; budget {budget} bytes = dense + "
        f"a quarter of the expert bytes, out of which the KV cache ({DEMO_MAX_CONTEXT} tokens) and "
        f"{DEMO_HEADROOM} headroom come first")  # fmt: skip
    model, tokenizer = load(store_path, memory_budget=budget, max_context=DEMO_MAX_CONTEXT, headroom=DEMO_HEADROOM)
    plan = plan_of(model)
    say(f"{plan.describe()}: what is left buys {plan.slots_per_layer} of {plan.num_experts} expert slots per layer")
    say(f"the same run from the command line: mlxstore generate --model {store_path} --memory-budget {budget} "
        f"--max-context {DEMO_MAX_CONTEXT} --headroom {DEMO_HEADROOM} --ignore-chat-template -p '...'")  # fmt: skip
    prompt = mx.array(tokenizer.encode("w11 w42 w7 w99 w256 w3 w18"), dtype=mx.int32)
    streamed_tokens, streamed_logits = _greedy_logits(model, prompt, max_tokens)
    st = stats(model).total
    say("loading the same model resident with mlx_lm.load for the equality check")
    resident, _ = mlx_lm.load(str(src))
    resident_tokens, resident_logits = _greedy_logits(resident, prompt, max_tokens)
    logits_match = all(np.array_equal(a, b) for a, b in zip(streamed_logits, resident_logits))
    return DemoResult(
        model_bytes=dense + expert, expert_bytes=expert, budget=budget,
        slots_per_layer=plan.slots_per_layer, num_experts=plan.num_experts,
        tokens_match=streamed_tokens == resident_tokens, logits_match=logits_match,
        text=tokenizer.decode(streamed_tokens), hit_rate=st.hit_rate, misses=st.misses,
        bytes_read=st.bytes_read,
    )  # fmt: skip

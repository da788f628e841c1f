"""Streaming text generation over a streamed model, with the one-line summary users read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx_lm import stream_generate

from mlxstore.mlxlm import make_sampler

from .load import stats


def build_prompt(tokenizer, prompt: str, *, chat_template: bool = True, system_prompt: str | None = None) -> list[int]:
    """Token ids for `prompt`, through the chat template by default (as mlx_lm.generate does)."""
    use_template = chat_template and getattr(tokenizer, "has_chat_template", False)
    if use_template:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(prompt, add_special_tokens=not use_template)


def load_draft(path: str) -> nn.Module:
    """A draft model for speculative decoding: a store (resident) or an mlx-lm directory."""
    from pathlib import Path

    from mlxstore.model import load_model

    if (Path(path) / "config.json").exists():
        return mlx_lm.load(path)[0]
    return load_model(path)[0]


@dataclass
class Summary:
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    hit_rate: float = 0.0
    gb_read: float = 0.0
    peak_memory_gb: float = 0.0

    def line(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tok {self.prompt_tps:.1f} tok/s | decode {self.generation_tokens} tok "
            f"{self.generation_tps:.2f} tok/s | hit rate {self.hit_rate:.1%} | read {self.gb_read:.3f} GB | "
            f"peak memory {self.peak_memory_gb:.3f} GB"
        )


def generate_text(
    model: nn.Module,
    tokenizer,
    prompt: list[int],
    *,
    max_tokens: int = 256,
    temp: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
    summary: Summary | None = None,
    **generate_kw,
) -> Iterator[str]:
    """Yield text segments; fill `summary` (speeds, hit rate, bytes read) when done.

    generate_kw goes to mlx_lm's `stream_generate` (draft_model, num_draft_tokens,
    kv_bits, kv_group_size, max_kv_size, prefill_step_size, prompt_cache).
    """
    if seed is not None:
        mx.random.seed(seed)
    sampler = make_sampler(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p)
    stats(model, reset=True)
    last = None
    for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler, **generate_kw):
        last = response
        yield response.text
    if summary is not None and last is not None:
        total = stats(model).total
        summary.prompt_tokens, summary.prompt_tps = last.prompt_tokens, last.prompt_tps
        summary.generation_tokens, summary.generation_tps = last.generation_tokens, last.generation_tps
        summary.hit_rate = total.hit_rate
        summary.gb_read = total.bytes_read / 1e9
        summary.peak_memory_gb = last.peak_memory

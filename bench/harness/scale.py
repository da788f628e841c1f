"""How big a benchmark run is: the model's shape and how many tokens each figure uses.

Why one place: `python -m bench all` (full), `--quick` and the tests' toy run measure the
same targets the same way; only these numbers differ. Every scale keeps Qwen3-30B-A3B's
per-expert shapes except `toy`, which exists to test the harness in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    layers: int
    vocab: int
    experts: int = 128
    top_k: int = 8
    hidden: int = 2048
    moe_intermediate: int = 768
    intermediate: int = 6144
    heads: int = 32
    kv_heads: int = 4
    head_dim: int = 128
    scale_dtype: str = "float32"  # bfloat16 scales run ~10x slower on the CPU backend
    prompt: int = 16  # prompt tokens before every decode measurement
    warmup: int = 4  # decode tokens run before measuring (stats and times discarded)
    tokens: int = 16  # decode tokens measured per side (lockstep rounds)
    sweep_warmup: int = 2  # the same for the prefetch table and the budget curve
    sweep_tokens: int = 12
    p5_prompt: int = 512  # P5's prompt length
    p5_resident_prompt: int = 32  # backend batching reference (resident, batched vs single)
    curve_slots: tuple[int, ...] = (8, 16, 32, 64, 128)
    miss_slots: int = 8  # slots per layer of the miss-heavy runs (P2, P3)
    max_context: int = 1024  # KV tokens every streamed plan reserves
    lockstep: bool = True  # run compared sides interleaved (needs both in memory at once)
    table_copies: bool = True  # own store copy per page-cache "keep" run (no shared cache)
    min_cap: int = 0  # floor of P4's cap (a third of a toy model cannot hold Python itself)

    def as_dict(self) -> dict:
        return asdict(self)

    def genmodel_config(self) -> dict:
        from bench.harness.genmodel import make_config

        return make_config(self.layers, self.experts, self.top_k, self.hidden,
                           self.moe_intermediate, self.intermediate, self.heads, self.kv_heads,
                           self.head_dim, self.vocab, dtype=self.scale_dtype)  # fmt: skip


SCALES = {
    # Qwen3-30B-A3B: 48 layers, its vocabulary; ~19 GB with float32 scales. Resident and
    # streamed copies do not both fit in 24 GB, so sides run one after the other.
    "full": Scale("full", layers=48, vocab=151936, tokens=8, warmup=2, prompt=8, sweep_tokens=6,
                  p5_prompt=64, lockstep=False, table_copies=False),
    # 8 real-shape layers (3 GB); a smaller vocabulary keeps the head from dominating a token.
    "quick": Scale("quick", layers=8, vocab=32768, tokens=32, p5_prompt=128),
    # Seconds-long harness test: 128 tiny experts so the real traces replay unchanged.
    "toy": Scale("toy", layers=2, vocab=256, hidden=128, moe_intermediate=128, intermediate=256,
                 heads=2, kv_heads=1, head_dim=32 * 2, prompt=4, warmup=1, tokens=3,
                 sweep_warmup=1, sweep_tokens=2,
                 p5_prompt=8, p5_resident_prompt=4, curve_slots=(8, 128), max_context=64,
                 min_cap=768 << 20),
}  # fmt: skip

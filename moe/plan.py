"""The memory plan: how many expert slots per layer a budget buys, and where the bytes go.

The budget is the whole footprint a user cares about: pinned dense weights + expert
banks + the KV cache at a stated maximum context + headroom for activations and MLX's
allocator. The KV figure is an estimate from the config (an upper bound for models with
sliding-window or linear-attention layers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlxstore.sizes import format_in, format_size, parse_size, unit_of

DEFAULT_MAX_CONTEXT = 4096


@dataclass(frozen=True)
class Plan:
    budget: int | None
    dense_bytes: int
    expert_bytes: int  # one expert of every MoE layer (bytes per slot, summed over layers)
    num_layers: int
    num_experts: int
    top_k: int
    slots_per_layer: int
    kv_bytes: int
    headroom_bytes: int
    max_context: int
    reserved_bytes: int = 0  # kept for a caller's own use, e.g. the server's prompt cache

    @property
    def bank_bytes(self) -> int:
        return self.slots_per_layer * self.expert_bytes

    @property
    def total_bytes(self) -> int:
        return self.dense_bytes + self.bank_bytes + self.kv_bytes + self.headroom_bytes + self.reserved_bytes

    def describe(self) -> str:
        budget = format_size(self.budget) if self.budget is not None else "none"
        reserved = f" + reserved {format_size(self.reserved_bytes)}" if self.reserved_bytes else ""
        return (
            f"mlxstore plan: dense {format_size(self.dense_bytes)} + experts "
            f"{self.slots_per_layer}/{self.num_experts} slots x {self.num_layers} layers "
            f"{format_size(self.bank_bytes)} + KV@{self.max_context} {format_size(self.kv_bytes)} + "
            f"headroom {format_size(self.headroom_bytes)}{reserved} = {format_size(self.total_bytes)} "
            f"(budget {budget})"
        )


def available_memory() -> int:
    """Memory the machine can give us now (Linux: MemAvailable; elsewhere half of RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def kv_bytes_per_token(config: dict, itemsize: int) -> int:
    """Keys + values of every attention layer for one token, from the config."""
    cfg = config.get("text_config", config)
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0
    heads = cfg.get("num_attention_heads") or 1
    if cfg.get("kv_lora_rank"):  # multi-head latent attention caches per-head keys and values
        width = heads * (cfg.get("qk_nope_head_dim", 0) + cfg.get("qk_rope_head_dim", 0) + cfg.get("v_head_dim", 0))
    else:
        kv_heads = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or cfg.get("hidden_size", 0) // heads
        width = 2 * kv_heads * head_dim
    return layers * width * itemsize


def make_plan(
    *,
    budget: int | str | None,
    dense_bytes: int,
    expert_bytes: int,
    num_layers: int,
    num_experts: int,
    top_k: int,
    config: dict,
    itemsize: int,
    max_context: int = DEFAULT_MAX_CONTEXT,
    headroom: int | str | None = None,
    slots_per_layer: int | None = None,
    reserve: int | str = 0,
) -> Plan:
    """Slots per layer for a budget (or the given number), with a clear error when too small."""
    from mlxstore.formats import StoreError

    kv = kv_bytes_per_token(config, itemsize) * max_context
    reserved = parse_size(reserve)
    budget_bytes = parse_size(budget) if budget is not None else None
    if budget_bytes is None and slots_per_layer is None:
        budget_bytes = available_memory()
    if headroom is None:
        base = budget_bytes if budget_bytes is not None else dense_bytes
        head = max(64 << 20, base // 20)
    else:
        head = parse_size(headroom)
    if slots_per_layer is not None:
        if not 1 <= slots_per_layer:
            raise StoreError(f"slots_per_layer must be >= 1, got {slots_per_layer}")
        slots = min(slots_per_layer, num_experts)
    else:
        free = budget_bytes - dense_bytes - kv - head - reserved
        slots = min(num_experts, free // expert_bytes) if expert_bytes else num_experts
        minimum = dense_bytes + top_k * expert_bytes + kv + head + reserved
        if slots < top_k:
            typed = budget is not None  # state the minimum in the unit the user wrote
            shown = str(budget).strip() if typed else format_size(budget_bytes)
            need = format_in(minimum, unit_of(budget)) if typed else format_size(minimum)
            kept = f" + reserved {format_size(reserved)}" if reserved else ""
            raise StoreError(
                f"memory budget {shown} is too small: at least {need} "
                f"is needed (dense {format_size(dense_bytes)} + {top_k} slots x {num_layers} layers "
                f"{format_size(top_k * expert_bytes)} + KV at {max_context} tokens {format_size(kv)} "
                f"+ headroom {format_size(head)}{kept})"
            )
    return Plan(budget_bytes, dense_bytes, expert_bytes, num_layers, num_experts, top_k, slots, kv, head, max_context,
                reserved)

"""The memory plan: how many expert slots per layer a budget buys, and where the bytes go.

The budget is the MLX memory of the whole run: pinned dense weights + expert banks + the
KV cache at a stated maximum context + prefill activations at the prefill step the plan
picks + headroom for MLX's allocator. Everything here is estimated from the model config
(no weights are read): the KV figure follows the cache types mlx-lm builds (full, sliding
window, linear-attention state, `kv_bits` quantization, a rotating `max_kv_size`, the
copy made when a cache grows its buffer); the activation figure is an upper bound of one
decoder layer's temporaries for one prompt chunk (prompt chunks evaluate each decoder layer,
moe.context, so layers do not pile up on any backend) on a backend that materializes
attention scores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from mlxstore.sizes import format_in, format_size, parse_size, unit_of

DEFAULT_MAX_CONTEXT = 4096
MAX_PREFILL_STEP = 2048  # mlx-lm's default prefill step, the largest the plan considers
KV_GROWTH_STEP = 256  # mlx-lm's KVCache and QuantizedKVCache grow their buffers in these steps
ACTIVATION_SHARE = 0.5  # at most this share of what dense + KV + top-k slots leave goes to activations
ATTENTION_COPIES = 3  # scores, masked scores and softmax output alive at once (composed attention)
HIDDEN_COPIES = 4  # residual, normed input, attention output, MLP output
PAST_MAX_CONTEXT = ("stop", "warn")
DEFAULT_PAST_MAX_CONTEXT = "stop"


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
    prefill_step_size: int = MAX_PREFILL_STEP  # prompt tokens per forward pass generation must use
    activation_bytes: int = 0  # prefill temporaries at prefill_step_size and max_context
    staging_bytes: int = 0  # host buffers misses are read into: the staged fill's and the read-ahead's

    @property
    def bank_bytes(self) -> int:
        return self.slots_per_layer * self.expert_bytes

    @property
    def total_bytes(self) -> int:
        return (self.dense_bytes + self.bank_bytes + self.kv_bytes + self.activation_bytes + self.headroom_bytes
                + self.reserved_bytes + self.staging_bytes)  # fmt: skip

    def describe(self) -> str:
        budget = format_size(self.budget) if self.budget is not None else "none"
        reserved = f" + reserved {format_size(self.reserved_bytes)}" if self.reserved_bytes else ""
        reserved += f" + staging {format_size(self.staging_bytes)}" if self.staging_bytes else ""
        return (
            f"mlxstore plan: dense {format_size(self.dense_bytes)} + experts "
            f"{self.slots_per_layer}/{self.num_experts} slots x {self.num_layers} layers "
            f"{format_size(self.bank_bytes)} + KV@{self.max_context} {format_size(self.kv_bytes)} + "
            f"activations@{self.prefill_step_size} {format_size(self.activation_bytes)} + "
            f"headroom {format_size(self.headroom_bytes)}{reserved} = {format_size(self.total_bytes)} "
            f"(budget {budget}; prefill step {self.prefill_step_size})"
        )


@dataclass(frozen=True)
class CacheOptions:
    """The KV cache generation will build (mlx-lm's `kv_bits`, `kv_group_size`, `max_kv_size`)."""

    kv_bits: int | None = None
    kv_group_size: int = 64
    max_kv_size: int | None = None
    latent: bool = False  # multi-head latent attention that caches the compressed latent (mlx-lm's absorbed MLA)
    # The caches mlx-lm builds for the model, one (kind, window) each: ("full", 0),
    # ("sliding", window), ("linear", 0) (moe.spec.cache_layout); empty: read from the config.
    layout: tuple[tuple[str, int], ...] = ()


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


def _text(config: dict) -> dict:
    return config.get("text_config", config)


# The config keys one quantity goes by across mlx-lm's architectures (dbrx, phixtral and
# longcat_flash do not use the Llama names).
_LAYERS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
_HEADS = ("num_attention_heads", "n_heads", "num_heads")
_HIDDEN = ("hidden_size", "d_model", "model_dim")


def _first(cfg: dict, names: tuple[str, ...], default: int = 0) -> int:
    return next((cfg[n] for n in names if cfg.get(n)), default)


def _num_layers(cfg: dict) -> int:
    return _first(cfg, _LAYERS)


def _heads(cfg: dict) -> int:
    return _first(cfg, _HEADS, 1)


def _kv_heads(cfg: dict) -> int:
    return cfg.get("num_key_value_heads") or (cfg.get("attn_config") or {}).get("kv_n_heads") or _heads(cfg)


def layer_kinds(config: dict, cache: CacheOptions = CacheOptions()) -> list[tuple[str, int]]:
    """(kind, window) of each cache: `cache.layout` where known (the caches the model
    builds), else one per decoder layer from the config's `layer_types` or
    `full_attention_interval` (every layer "full" when the config says neither)."""
    if cache.layout:
        return list(cache.layout)
    cfg = _text(config)
    n = _num_layers(cfg)
    window = cfg.get("sliding_window") or 0
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n:
        return [("sliding", window) if "sliding" in str(t) and window else ("linear", 0) if "linear" in str(t)
                else ("full", 0) for t in types]  # fmt: skip
    interval = cfg.get("full_attention_interval")
    if isinstance(interval, int) and interval > 0:
        return [("full", 0) if (i + 1) % interval == 0 else ("linear", 0) for i in range(n)]
    return [("full", 0)] * n


def _kv_width(cfg: dict, latent: bool) -> int:
    """Elements cached per token by one attention layer (keys + values)."""
    heads = _heads(cfg)
    indexer = cfg.get("index_head_dim") or 0  # sparse attention's indexer keeps a key per token too
    if cfg.get("kv_lora_rank"):
        if latent:
            return cfg["kv_lora_rank"] + cfg.get("qk_rope_head_dim", 0) + indexer
        per_head = cfg.get("qk_nope_head_dim", 0) + cfg.get("qk_rope_head_dim", 0) + cfg.get("v_head_dim", 0)
        return heads * per_head + indexer
    return 2 * _kv_heads(cfg) * _head_dim(cfg) + indexer


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or _first(cfg, _HIDDEN) // _heads(cfg)


def _linear_state_bytes(cfg: dict, itemsize: int) -> int | None:
    """A linear-attention layer's fixed state (convolution window + recurrent state), or None if unknown."""
    try:
        key_dim = cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
        value_heads, value_dim = cfg["linear_num_value_heads"], cfg["linear_value_head_dim"]
        conv = (cfg["linear_conv_kernel_dim"] - 1) * (2 * key_dim + value_heads * value_dim) * itemsize
    except (KeyError, TypeError):
        return None
    return conv + value_heads * value_dim * cfg["linear_key_head_dim"] * 4  # recurrent state in float32


def kv_bytes_per_token(config: dict, itemsize: int, latent: bool = False) -> int:
    """Keys + values of every attention layer for one token, unquantized, from the config."""
    cfg = _text(config)
    return _num_layers(cfg) * _kv_width(cfg, latent) * itemsize


def _cached_tokens(kind: tuple[str, int], context: int, step: int, cache: CacheOptions) -> int:
    """Tokens one layer's cache holds at most (a rotating cache keeps its window plus one chunk)."""
    chunk = min(step, context)
    if kind[0] == "sliding" and kind[1]:
        return min(context, kind[1] + chunk)
    if cache.max_kv_size is not None:
        return min(context, cache.max_kv_size + chunk)
    return context + KV_GROWTH_STEP - 1  # a buffer grows past the tokens it holds by less than one step


def kv_bytes(config: dict, itemsize: int, context: int, step: int = MAX_PREFILL_STEP,
             cache: CacheOptions = CacheOptions()) -> int:  # fmt: skip
    """The KV cache at `context` tokens, as mlx-lm builds and grows it.

    Full-attention layers hold `context` tokens plus less than one growth step, sliding and
    rotating ones their window plus one prompt chunk, linear-attention ones a fixed state.
    While a buffer grows, the old one is alive next to the new one: one layer's worth is
    added. With `kv_bits` the cache is quantized (bits/8 bytes per element plus a scale
    and a bias per group) after the first chunk, which is held unquantized until then.
    """
    cfg = _text(config)
    width = _kv_width(cfg, cache.latent)
    if cache.kv_bits:
        per_element = cache.kv_bits / 8 + 2 * itemsize / cache.kv_group_size
    else:
        per_element = itemsize
    total = largest = 0
    for kind in layer_kinds(config, cache):
        if kind[0] == "linear" and (state := _linear_state_bytes(cfg, itemsize)) is not None:
            total += state
            continue
        layer = math.ceil(_cached_tokens(kind, context, step, cache) * width * per_element)
        total += layer
        largest = max(largest, layer)
    first_chunk = kv_bytes_per_token(config, itemsize, cache.latent) * min(step, context) if cache.kv_bits else 0
    return total + largest + first_chunk


def _num_experts(cfg: dict) -> int:
    return next((cfg[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if cfg.get(k)), 0)


def activation_bytes(config: dict, step: int, context: int, itemsize: int, cache: CacheOptions = CacheOptions(),
                     top_k: int | None = None) -> int:  # fmt: skip
    """Upper bound of the temporaries of one prompt chunk of `step` tokens at `context`.

    One decoder layer's worth: hidden states (a few copies), the attention's projections
    and its scores (heads x step x keys, with copies for masking and softmax; multi-head
    latent attention also expands its latent to per-head keys and values over the
    context), the MLP's intermediates (the dense or shared MLP, and top-k expert rows with
    their gathered inputs), router logits in float32, and the last token's logits.
    Generation evaluates only the last position's logits, so no step x vocab term.
    """
    cfg = _text(config)
    hidden = _first(cfg, _HIDDEN)
    heads = _heads(cfg)
    kinds = layer_kinds(config, cache)
    keys = max((_cached_tokens(k, context, step, cache) for k in kinds if k[0] != "linear"), default=step)
    keys = min(keys, context)
    t = min(step, context)
    out = HIDDEN_COPIES * t * hidden * itemsize
    if cfg.get("kv_lora_rank"):
        head = cfg.get("qk_nope_head_dim", 0) + cfg.get("qk_rope_head_dim", 0)
        per_head = head + cfg.get("v_head_dim", 0)
        out += heads * (t * per_head + keys * per_head) * itemsize  # queries, outputs; per-head keys/values
    else:
        kv_heads = _kv_heads(cfg)
        out += (2 * heads + 2 * kv_heads) * _head_dim(cfg) * t * itemsize  # q, k, v, output
    out += ATTENTION_COPIES * heads * t * keys * itemsize + t * keys  # scores and the boolean mask
    if any(k[0] == "linear" for k in kinds) and (vheads := cfg.get("linear_num_value_heads")):
        conv = 2 * cfg.get("linear_num_key_heads", 0) * cfg.get("linear_key_head_dim", 0)
        conv += vheads * cfg.get("linear_value_head_dim", 0)
        out += 3 * t * conv * itemsize  # projections, convolution and gated outputs
    experts = _num_experts(cfg)
    k = top_k or cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 1
    moe_width = cfg.get("moe_intermediate_size") or cfg.get("intermediate_size", 0)
    dense_width = max(cfg.get("intermediate_size", 0), cfg.get("shared_expert_intermediate_size") or 0,
                      (cfg.get("n_shared_experts") or 0) * (cfg.get("moe_intermediate_size") or 0))  # fmt: skip
    mlp = 3 * t * dense_width * itemsize  # gate, up, activated
    if experts:
        mlp += t * k * (3 * moe_width + 2 * hidden) * itemsize  # per-row gate, up, activated; gathered in and out
        mlp += 2 * t * experts * 4  # router logits and scores in float32
    out += mlp
    return out + 2 * (cfg.get("vocab_size") or 0) * 4


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
    prefill_step_size: int | None = None,
    cache: CacheOptions = CacheOptions(),
    staging: Callable[[int], int] | int = 0,
) -> Plan:
    """Slots per layer and prefill step for a budget (or the given ones), with a clear error when too small.

    The step is the largest power of two up to MAX_PREFILL_STEP whose activations fit in
    ACTIVATION_SHARE of what dense + KV + top-k slots + headroom leave (at least 1); the
    rest buys slots. A caller's `prefill_step_size` is taken as given and must fit.
    `staging` is what a staged fill's host buffers hold for a number of slots per layer
    (`moe.bank.staging_bytes_for`), or a fixed size.
    """
    from mlxstore.formats import StoreError

    if prefill_step_size is not None and prefill_step_size < 1:
        raise StoreError(f"prefill_step_size must be >= 1, got {prefill_step_size}")
    staged = staging if callable(staging) else (lambda slots: staging)
    kept = parse_size(reserve)  # a fixed cost the plan works around, like the staging buffers
    budget_bytes = parse_size(budget) if budget is not None else None
    if budget_bytes is None and slots_per_layer is None:
        budget_bytes = available_memory()
    if headroom is None:
        base = budget_bytes if budget_bytes is not None else dense_bytes
        head = max(64 << 20, base // 20)
    else:
        head = parse_size(headroom)
    if slots_per_layer is not None and slots_per_layer < 1:
        raise StoreError(f"slots_per_layer must be >= 1, got {slots_per_layer}")
    fixed_slots = min(slots_per_layer, num_experts) if slots_per_layer is not None else min(top_k, num_experts)

    def cost(step: int) -> tuple[int, int]:
        return (kv_bytes(config, itemsize, max_context, step, cache),
                activation_bytes(config, step, max_context, itemsize, cache, top_k))  # fmt: skip

    def fits(step: int, share: float) -> bool:
        kv, act = cost(step)
        free = budget_bytes - dense_bytes - fixed_slots * expert_bytes - kv - head - kept - staged(fixed_slots)
        return act <= free * share

    steps = [prefill_step_size] if prefill_step_size is not None else [
        1 << i for i in range(MAX_PREFILL_STEP.bit_length() - 1, -1, -1)]  # fmt: skip
    if budget_bytes is None:
        step = steps[0]
    else:
        share = 1.0 if slots_per_layer is not None or prefill_step_size is not None else ACTIVATION_SHARE
        step = next((s for s in steps if fits(s, share)), steps[-1])
    kv, act = cost(step)
    if slots_per_layer is not None:
        slots = fixed_slots
    else:
        slots = _slots_that_fit(budget_bytes - dense_bytes - kv - act - head - kept, expert_bytes, num_experts, staged)
        if slots < top_k:
            staging_min = staged(top_k)
            minimum = dense_bytes + top_k * expert_bytes + kv + act + head + kept + staging_min
            typed = budget is not None  # state the minimum in the unit the user wrote
            shown = str(budget).strip() if typed else format_size(budget_bytes)
            need = format_in(minimum, unit_of(budget)) if typed else format_size(minimum)
            extra = f" + reserved {format_size(kept)}" if kept else ""
            extra += f" + staging {format_size(staging_min)}" if staging_min else ""
            raise StoreError(
                f"memory budget {shown} is too small: at least {need} "
                f"is needed (dense {format_size(dense_bytes)} + {top_k} slots x {num_layers} layers "
                f"{format_size(top_k * expert_bytes)} + KV at {max_context} tokens {format_size(kv)} "
                f"+ activations at prefill step {step} {format_size(act)} "
                f"+ headroom {format_size(head)}{extra})"
            )
    return Plan(budget_bytes, dense_bytes, expert_bytes, num_layers, num_experts, top_k, slots, kv, head, max_context,
                kept, step, act, staged(slots))  # fmt: skip


def _slots_that_fit(free: int, expert_bytes: int, num_experts: int, staged: Callable[[int], int]) -> int:
    """The most slots per layer (up to num_experts) whose banks and staging fit in `free`
    (0 if none). Staging grows with the slots up to its load size, so what fits is found
    by bisection: if n slots fit, so do fewer."""
    if not expert_bytes:
        return num_experts
    low, high = 0, num_experts
    while low < high:
        mid = (low + high + 1) // 2
        if mid * expert_bytes + staged(mid) <= free:
            low = mid
        else:
            high = mid - 1
    return low


def smallest_budget(plan_at, good=lambda plan: True, high: int = 1 << 50) -> int | None:
    """The smallest budget (to 1 MiB) at which `plan_at(budget)` plans without error and
    `good(plan)` holds, found by bisection (None if not even `high` does)."""
    from mlxstore.formats import StoreError

    def ok(budget: int) -> bool:
        try:
            return good(plan_at(budget))
        except StoreError:
            return False

    if not ok(high):
        return None
    lo, hi = 0, high  # ok(hi) holds, ok(lo) does not
    while hi - lo > 1 << 20:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi

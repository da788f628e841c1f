"""What a memory plan needs to know about a model, read without its weights.

From a store the byte counts come from its index; from a `config.json` alone the mlx-lm
model class is built lazily (MLX arrays are not allocated until evaluated, and nothing
here evaluates them), cast and quantized as the config says, so every tensor's shape and
bytes are known while no weight exists. Either way the experts are found the way
`moe.load` finds them (`find_switches`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlxstore.formats import DTYPE_SIZES, StoreError
from mlxstore.formats.layout import extent_length
from mlxstore.mlxlm import ArraysCache, CacheList, RotatingKVCache, make_prompt_cache
from mlxstore.pack import plan as pack_plan
from mlxstore.switches import find_switches

from .bank import ahead_bytes, staging_bytes_for
from .options import DEFAULT_PREFETCH, DEFAULT_STAGED_LOAD_SIZE
from .plan import CacheOptions, Plan, make_plan

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """A model's plan inputs: dense bytes, bytes per expert slot (summed over MoE layers),
    MoE layer count, experts, top-k, activation itemsize and the config."""

    source: str
    config: dict = field(repr=False)
    dense_bytes: int
    expert_bytes: int  # one expert of every MoE layer
    num_layers: int  # MoE layers
    num_experts: int
    top_k: int
    itemsize: int
    latent_kv: bool  # the attention caches a compressed latent (multi-head latent attention)
    quantization: str  # a short description, e.g. "affine 4-bit g64"
    largest_expert_bytes: int = 0  # the largest one expert of one layer takes on disk (its extent)
    cache_layout: tuple[tuple[str, int], ...] = ()  # the caches the model builds (cache_layout)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    @property
    def all_expert_bytes(self) -> int:
        return self.num_experts * self.expert_bytes

    def plan(self, budget: int | str | None, **kw) -> Plan:
        """`make_plan` for this model; kw: max_context, headroom, slots_per_layer, reserve,
        prefill_step_size, `kv_bits`, `kv_group_size`, `max_kv_size` for the cache, and
        `fill`, `staged_load_size`, `prefetch` as `moe.load` takes them (fill None: this
        backend's)."""
        cache = CacheOptions(kv_bits=kw.pop("kv_bits", None), kv_group_size=kw.pop("kv_group_size", 64),
                             max_kv_size=kw.pop("max_kv_size", None), latent=self.latent_kv,
                             layout=self.cache_layout)  # fmt: skip
        ahead = ahead_bytes(kw.pop("prefetch", DEFAULT_PREFETCH), self.top_k, self.largest_expert_bytes)
        staging = staging_bytes_for(kw.pop("fill", None), kw.pop("staged_load_size", DEFAULT_STAGED_LOAD_SIZE),
                                    self.largest_expert_bytes, ahead)  # fmt: skip
        return make_plan(budget=budget, dense_bytes=self.dense_bytes, expert_bytes=self.expert_bytes,
                         num_layers=self.num_layers, num_experts=self.num_experts, top_k=self.top_k,
                         config=self.config, itemsize=self.itemsize, cache=cache, staging=staging, **kw)  # fmt: skip


def cache_layout(model: nn.Module) -> tuple[tuple[str, int], ...]:
    """(kind, window) of every cache mlx-lm builds for `model` (its `make_cache`, else a
    KVCache per layer; a CacheList's parts each): what the config alone does not say, as
    longcat_flash's two attentions a layer. A cache of a model's own class counts as full
    attention. Empty if the model cannot build its caches here."""
    try:
        caches = make_prompt_cache(model)
    except Exception:  # noqa: BLE001 - then the plan reads the layers from the config
        return ()
    layout: list[tuple[str, int]] = []

    def add(c) -> None:
        if isinstance(c, CacheList):
            for part in c.caches:
                add(part)
        elif isinstance(c, RotatingKVCache):
            layout.append(("sliding", c.max_size))
        elif isinstance(c, ArraysCache):
            layout.append(("linear", 0))
        else:
            layout.append(("full", 0))

    for c in caches:
        add(c)
    return tuple(layout)


def cache_options(model: nn.Module, kv_bits: int | None = None, kv_group_size: int = 64,
                  max_kv_size: int | None = None) -> CacheOptions:  # fmt: skip
    """The cache generation builds for `model` with these mlx-lm options, as the plan counts it."""
    return CacheOptions(kv_bits, kv_group_size, max_kv_size, latent_kv(model), cache_layout(model))


def latent_kv(model: nn.Module) -> bool:
    """True when the model's attention caches its compressed latent (mlx-lm's absorbed
    multi-head latent attention keeps `embed_q`/`unembed_out` instead of per-head keys)."""
    return any(name.endswith("embed_q") for name, _ in model.named_modules())


def _switch_sizes(sites, nbytes: dict[str, int], members: dict[str, list[str]], experts_of) -> tuple[int, int, int, int]:
    per_slot, largest = 0, 0
    for site in sites:
        names = members[site.path]
        parts = [nbytes[n] // experts_of(site) for n in names]
        per_slot += sum(parts)
        largest = max(largest, extent_length(parts))  # as `pack` lays an extent out
    num_experts = max(experts_of(site) for site in sites)
    top_k = sites_top_k(sites)
    return per_slot, num_experts, top_k, largest


def sites_top_k(sites) -> int:
    """Experts per token the plan counts: the most any MoE layer picks (1 where none says)."""
    return max((site.top_k or 1) for site in sites)


def largest_extent(store, sites) -> int:
    """Bytes of the largest one expert of one streamed layer on disk."""
    return max((x.length for site in sites for x in store.expert_groups[site.path].extents), default=0)


def store_sizes(store, sites, dense: list[str]) -> tuple[int, int, int, int]:
    """(dense bytes, bytes per slot over all MoE layers, experts, top-k) from a store's index."""
    groups = store.expert_groups
    tensors = store.index.tensors
    per_slot = sum(sum(tensors[n].nbytes // groups[site.path].num_experts
                       for n in groups[site.path].tensors) for site in sites)  # fmt: skip
    num_experts = max(groups[site.path].num_experts for site in sites)
    top_k = sites_top_k(sites)
    return sum(tensors[n].nbytes for n in dense), per_slot, num_experts, top_k


def store_itemsize(store) -> int:
    """Bytes per element of activations: the smallest float type among the dense tensors."""
    dense = {t.dtype for t in store.index.tensors.values() if t.expert_group is None}
    return min((DTYPE_SIZES[d] for d in dense & {"float16", "bfloat16", "float32"}), default=2)


def from_store(store) -> ModelSpec:
    """The spec of a packed store (sizes from its index, nothing read but the index)."""
    from mlxstore.model import build_model, model_config

    config = model_config(store)
    model = build_model(config, store.quantization)
    sites = [s for s in find_switches(model) if s.path in store.expert_groups]
    if not sites:
        raise StoreError(f"{store.path}: the model has no experts to stream (nothing to plan)")
    dense = [n for n in store.tensor_names if store.index.tensors[n].expert_group is None]
    dense_bytes, per_slot, experts, top_k = store_sizes(store, sites, dense)
    q = _describe_quantization({p: dict(v) for p, v in (store.quantization or {}).items()})
    return ModelSpec(str(store.path), config, dense_bytes, per_slot, len(sites), experts, top_k,
                     store_itemsize(store), latent_kv(model), q, largest_extent(store, sites),
                     cache_layout(model))  # fmt: skip


def _describe_quantization(per_module: dict[str, dict]) -> str:
    if not per_module:
        return "none"
    counts: dict[str, int] = {}
    for q in per_module.values():
        key = f"{q.get('mode', 'affine')} {q['bits']}-bit g{q['group_size']}"
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return ranked[0][0] + "".join(f" (+{n} modules {k})" for k, n in ranked[1:])


def _quantization(config: dict) -> dict | None:
    """The config's quantization as mlx-lm's loader reads it (`quantization`, or a legacy
    `quantization_config` naming mxfp4/mxfp8)."""
    q = config.get("quantization") or config.get("text_config", {}).get("quantization")
    if q:
        return q
    legacy = config.get("quantization_config") or {}
    method = legacy.get("quant_method") if isinstance(legacy, dict) else None
    if method in ("mxfp4", "mxfp8"):
        return {"group_size": 32, "bits": 4 if method == "mxfp4" else 8, "mode": method}
    if method:
        raise StoreError(f"quantization method {method!r} is not read from a config alone; pack the model and plan the store")
    return None


def build_lazy(config: dict) -> tuple[nn.Module, dict[str, dict]]:
    """The mlx-lm model of `config`, cast to its dtype and quantized as the config says
    (per-module overrides included), with no parameter evaluated; and the quantization
    applied to each module path."""
    from mlxstore.model import instantiate

    model = instantiate(config, "the config")
    arch = config.get("model_type")
    text = config.get("text_config", config)
    dtype = getattr(mx, str(text.get("torch_dtype") or config.get("torch_dtype") or text.get("dtype") or "bfloat16"),
                    mx.bfloat16)  # fmt: skip
    keep = getattr(model, "cast_predicate", lambda _: True)
    model.update(tree_unflatten([(k, v.astype(dtype)) for k, v in tree_flatten(model.parameters())
                                 if keep(k) and mx.issubdtype(v.dtype, mx.floating)]))  # fmt: skip
    q = _quantization(config)
    applied: dict[str, dict] = {}
    if q:
        base = {"group_size": q["group_size"], "bits": q["bits"], "mode": q.get("mode", "affine")}
        model_predicate = getattr(model, "quant_predicate", None)

        def predicate(path: str, module: nn.Module):
            if path in q:
                choice = q[path]
            elif not hasattr(module, "to_quantized") or module.weight.shape[-1] % base["group_size"]:
                return False
            else:
                choice = model_predicate(path, module) if model_predicate is not None else True
            if choice:
                # a dict is passed to `to_quantized` as is (its mode defaults to affine), as mlx-lm does
                applied[path] = {"mode": "affine", **choice} if isinstance(choice, dict) else dict(base)
            return applied[path] if choice else False

        try:
            nn.quantize(model, class_predicate=predicate)
        except Exception as e:  # noqa: BLE001 - MLX reports bad bits or group sizes as ValueError
            raise StoreError(f"architecture {arch!r}: the config's quantization does not apply: "
                             f"{type(e).__name__}: {e}") from None  # fmt: skip
    return model, applied


def from_config(config: dict, source: str = "config") -> ModelSpec:
    """The spec of the checkpoint `config` describes, from the lazily built model."""
    model, applied = build_lazy(config)
    sites = find_switches(model)
    if not sites:
        raise StoreError(f"{source}: the {config.get('model_type')!r} model has no experts to stream (nothing to plan)")
    params = tree_flatten(model.parameters())
    nbytes = {k: v.nbytes for k, v in params}

    def experts_of(site) -> int:
        return next(v.shape[0] for k, v in tree_flatten(site.module.parameters()) if v.ndim >= 3)

    # an expert group's members as `pack` groups them (not a norm kept under the experts, as muse_spark's)
    members = {site.path: [] for site in sites}
    for prefix, idx in pack_plan(params, {site.path: experts_of(site) for site in sites}):
        if prefix:
            members[prefix] += [params[i][0] for i in idx]
    per_slot, experts, top_k, largest = _switch_sizes(sites, nbytes, members, experts_of)
    expert_names = {n for names in members.values() for n in names}
    dense_bytes = sum(b for n, b in nbytes.items() if n not in expert_names)
    floats = {v.dtype.size for k, v in tree_flatten(model.parameters())
              if k not in expert_names and mx.issubdtype(v.dtype, mx.floating)}  # fmt: skip
    return ModelSpec(source, config, dense_bytes, per_slot, len(sites), experts, top_k,
                     min(floats, default=2), latent_kv(model), _describe_quantization(applied), largest,
                     cache_layout(model))  # fmt: skip


def read_config(source: str | os.PathLike) -> tuple[dict, str] | None:
    """`(config, where)` when `source` is a config.json, a directory holding one that is
    not a store, or a repo id whose config.json is in the local Hugging Face cache; None
    when it is none of those (a store, or nothing)."""
    path = Path(source)
    if path.is_file() and path.name.endswith(".json"):
        file = path
    elif path.is_dir() and (path / "config.json").is_file() and not _is_store(path):
        file = path / "config.json"
    elif not path.exists() and _REPO_ID.match(str(source)):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        found = try_to_load_from_cache(str(source), "config.json")
        if not isinstance(found, str):
            raise StoreError(f"{source}: no such path, and no config.json for it in the local Hugging Face cache "
                             f"(download it first: hf download {source} config.json)")  # fmt: skip
        file = Path(found)
    else:
        return None
    try:
        config = json.loads(file.read_text())
    except OSError as e:
        raise StoreError(f"{file}: cannot read: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise StoreError(f"{file}: not a model config (a JSON object with a model_type)")
    return config, str(file)


def _is_store(path: Path) -> bool:
    from mlxstore.formats.reader import StoreReader

    try:
        StoreReader(path).close()
    except Exception:  # noqa: BLE001 - whatever it is, it does not open as a store
        return False
    return True


def spec_of(source: str | os.PathLike) -> ModelSpec:
    """The spec of a store, a config.json (or its directory), or a cached repo id."""
    found = read_config(source)
    if found is not None:
        return from_config(*found)
    if not Path(source).exists():
        raise StoreError(f"{source}: no such store or config.json")
    from mlxstore.store import open as open_store

    with open_store(source) as store:
        return from_store(store)


@dataclass(frozen=True)
class PlanSummary:
    """A model's plan at one budget (or the error saying why there is none), with the
    budgets that bound it: `minimum` (the least that plans at all), `all_experts` (the
    least at which every expert has a slot at the largest prefill step) and `auto` (the
    plan `None` picks on this machine, or None when this machine is too small)."""

    spec: ModelSpec
    plan: Plan | None
    error: str | None
    minimum: int | None
    all_experts: int | None
    auto: Plan | None


def summarize(spec: ModelSpec, budget: int | str | None = None, **kw) -> PlanSummary:
    """The plan of `spec` at `budget` (None: this machine's available memory) and its
    bounds; kw as `ModelSpec.plan` takes them (the bounds ignore `slots_per_layer`)."""
    from .plan import MAX_PREFILL_STEP, smallest_budget

    def plan_at(b, **extra):
        return spec.plan(b, **{**free, **extra})

    free = {k: v for k, v in kw.items() if k != "slots_per_layer"}
    step = kw.get("prefill_step_size") or MAX_PREFILL_STEP
    try:
        plan, error = spec.plan(budget, **dict(kw)), None
    except StoreError as e:
        plan, error = None, str(e)
    try:
        auto = plan_at(None)
    except StoreError:
        auto = None
    minimum = smallest_budget(plan_at)
    full = smallest_budget(plan_at, lambda p: p.slots_per_layer == p.num_experts and p.prefill_step_size == step)
    return PlanSummary(spec, plan, error, minimum, full, auto)

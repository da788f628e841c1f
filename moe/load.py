"""`mlxstore.moe.load`: an mlx-lm model whose dense weights are resident and experts stream.

Dense weights are materialized once and pinned; every switch module found in the model
tree gets a slot bank sized by the memory plan; the tokenizer is mlx-lm's. The result is
an ordinary mlx-lm model: `mlx_lm.generate`, `stream_generate`, prompt caches and
samplers work on it unchanged.
"""

from __future__ import annotations

import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import mlx.nn as nn

from mlxstore import osio
from mlxstore.formats import StoreError
from mlxstore.model import (
    build_model,
    check_complete,
    check_shapes,
    load_store_tokenizer,
    load_weights,
    model_config,
)
from mlxstore.sizes import parse_size
from mlxstore.staging import HostStaging, buffer_bytes
from mlxstore.store import Store
from mlxstore.store import open as open_store
from mlxstore.switches import find_switches

from . import pipeline
from .bank import BankOptions, ExpertBank, ahead_bytes, default_fill_mode, staging_bytes_for
from .context import guard as guard_context
from .discover import remember_input
from .optimistic import Optimism
from .optimistic import install as install_optimism
from .options import (
    DEFAULT_HITS_FIRST,
    DEFAULT_IO_THREADS,
    DEFAULT_OPTIMISTIC,
    DEFAULT_OVERLAP,
    DEFAULT_PAGE_CACHE,
    DEFAULT_PREFETCH,
    DEFAULT_READ_SIZE,
    DEFAULT_STAGED_COPY,
    DEFAULT_STAGED_LOAD_SIZE,
    LoadOptions,
    OptionError,
)
from .plain import set_plain
from .plan import (
    DEFAULT_MAX_CONTEXT,
    DEFAULT_PAST_MAX_CONTEXT,
    CacheOptions,
    Plan,
    kv_bytes,
    make_plan,
)
from .policy import DEFAULT_POLICY, make_policy
from .spec import cache_options, largest_extent, sites_top_k, store_itemsize, store_sizes
from .stats import StreamStats
from .streaming import NextLayer, StreamingExperts, default_pass_mode

log = logging.getLogger("mlxstore")

def load(
    store: str | os.PathLike | Store,
    memory_budget: int | str | None = None,
    *,
    slots_per_layer: int | None = None,
    max_context: int = DEFAULT_MAX_CONTEXT,
    headroom: int | str | None = None,
    policy: str = DEFAULT_POLICY,
    prefetch: str = DEFAULT_PREFETCH,
    page_cache: str = DEFAULT_PAGE_CACHE,
    io_threads: int = DEFAULT_IO_THREADS,
    read_size: int | str = DEFAULT_READ_SIZE,
    check: bool = False,
    tokenizer_config: dict | None = None,
    reserve: int | str = 0,
    group: mx.distributed.Group | None = None,
    prefill_step_size: int | None = None,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    max_kv_size: int | None = None,
    past_max_context: str = DEFAULT_PAST_MAX_CONTEXT,
    fill: str | None = None,
    staged_load_size: int | str = DEFAULT_STAGED_LOAD_SIZE,
    staged_copy: str = DEFAULT_STAGED_COPY,
    passes: str | None = None,
    overlap: bool = DEFAULT_OVERLAP,
    hits_first: bool = DEFAULT_HITS_FIRST,
    optimistic: bool = DEFAULT_OPTIMISTIC,
):
    """`(model, tokenizer)` like `mlx_lm.load`, with experts streamed from the store.

    memory_budget: bytes or "8GB"; None plans from the machine's available memory.
    slots_per_layer: fixes the bank size (overrides the budget's derivation).
    max_context: tokens of KV cache the budget reserves. headroom: bytes kept free for
    activations (default 5% of the budget, at least 64 MiB). policy: slot replacement
    policy (moe.policy). prefetch: "none", "temporal", "next-layer" (OS hints) or
    "next-layer-read" (the next layer's predicted experts read into host buffers; the
    plan counts them). page_cache:
    "keep" or "drop" a read expert's pages from the OS cache. io_threads, read_size: a
    call's misses are read in parts of at least read_size bytes (or "1MiB"), up to
    io_threads at once. check: verify the checksum
    of every expert read. reserve: bytes of the budget kept for the caller (the server's
    prompt cache), not given to expert slots. group: an `mx.distributed` group of more
    than one rank runs the model as a pipeline (moe.pipeline): this rank loads and streams only its own layers,
    under its own budget; every rank must call `load` and then run the same steps.

    Prefill and cache: prefill_step_size forces the prompt tokens per forward pass
    (default: the largest power of two up to 2048 whose activations fit); generation must
    use the plan's step, `moe.plan_of(model).prefill_step_size`. kv_bits, kv_group_size,
    max_kv_size: the KV cache generation will build, so the plan counts it.
    past_max_context: "stop" (default) raises `moe.ContextLimitError` before the context
    passes max_context; "warn" logs once and goes on past the budget.
    fill: how a missed expert reaches its slot, "direct" (read into the slot's memory) or
    "staged" (read into a host staging buffer, copied in by MLX on the GPU); None picks by
    backend (moe.bank). staged_load_size: bytes (or "8MiB") of each of the staged fill's two
    host buffers, raised to the largest expert if smaller (the plan counts them); a call's
    misses go in loads of whole experts that fill a buffer, the disk filling one while the
    GPU copies from the other (mlxstore.staging). staged_copy: "scatter" (default) or
    "slices", how a staged load is copied into its slots (moe.bank). passes: how a call needing more experts than slots runs, "full" or "rows"
    (moe.streaming; "rows" only on the CPU backend); None picks by backend. overlap:
    launch each streamed layer's expert kernels at once (`mx.async_eval`) so they run
    while Python builds the next layer, at the price of one more eval per layer (on by
    default: it won on the CPU backend and on CUDA alike; off is there to measure).
    hits_first: with passes "full", a decode call with misses launches its resident
    experts' rows before the misses are read, then the missed rows in a second call of
    the same shape (off by default; moe.streaming).
    optimistic: a decode step after one that missed nothing maps slots on the device and
    reads every layer's ids to the host once, at its end, instead of once per layer; if
    one was missing, the step's caches are put back and it runs again through the host
    path (moe.optimistic). Exact either way. Not with `group` (a pipeline stage cannot
    run a step again alone).
    Bad values raise `OptionError` (a ValueError) naming the option (moe/options.py).
    """
    options = LoadOptions(
        memory_budget=memory_budget, slots_per_layer=slots_per_layer, max_context=max_context,
        headroom=headroom, policy=policy, prefetch=prefetch, page_cache=page_cache,
        io_threads=io_threads, read_size=read_size, check=check, tokenizer_config=tokenizer_config, reserve=reserve,
        prefill_step_size=prefill_step_size, kv_bits=kv_bits, kv_group_size=kv_group_size,
        max_kv_size=max_kv_size, past_max_context=past_max_context, fill=fill, passes=passes,
        staged_load_size=staged_load_size, staged_copy=staged_copy, overlap=overlap, hits_first=hits_first,
        optimistic=optimistic,
    )  # fmt: skip
    return load_with(store, options, group)


def load_with(store: str | os.PathLike | Store, options: LoadOptions,
              group: mx.distributed.Group | None = None):  # fmt: skip
    """`load` with its options in one `LoadOptions` (what the CLI builds)."""
    owned = not isinstance(store, Store)
    group = group if group is not None and group.size() > 1 else None
    with pipeline.all_or_none(group):
        s = open_store(store) if owned else store
        try:
            return _load(s, options, group)
        finally:
            if owned:  # the banks read through descriptors of their own
                s.close()


def _load(s: Store, o: LoadOptions, group):
    passes = o.passes or default_pass_mode()
    if passes == "rows" and mx.default_device() != mx.cpu:
        raise OptionError(f"passes='rows' is exact only on the CPU backend (the default device is {mx.default_device()})")
    config = model_config(s)
    model = build_model(config, s.quantization)
    stage = pipeline.shard(model, s, group) if group is not None else None
    names = {n for n in s.tensor_names if stage is None or stage.owns(n)}
    if stage is not None:
        log.info(pipeline.describe(stage))
        config = pipeline.rank_config(config, stage)
    sites = find_switches(model)
    groups = s.expert_groups
    if not sites or not groups:
        log.warning("mlxstore: %s has no experts to stream; loading it resident", s.path)
        check_complete(model, names)
        load_weights(model, s, names, check=o.check)
        set_plain(model, "mlxstore_plan", None)
        return model, load_store_tokenizer(s, config, o.tokenizer_config)
    missing = [site.path for site in sites if site.path not in groups]
    if missing:
        raise StoreError(f"store has no expert group for the model's MoE layers {missing[:3]}")
    dense = [n for n in names if s.index.tensors[n].expert_group is None]
    check_complete(model, names)
    check_shapes(model, s, names)
    fill = o.fill or default_fill_mode()
    load_size = parse_size(o.staged_load_size)
    largest = largest_extent(s, sites)
    ahead = ahead_bytes(o.prefetch, sites_top_k(sites), largest)
    plan = _plan(s, sites, dense, config, o, model, staging_bytes_for(fill, load_size, largest, ahead))
    log.info(plan.describe())
    load_weights(model, s, dense, check=o.check)

    host_staging = HostStaging(buffer_bytes(load_size, largest, plan.slots_per_layer)) if fill == "staged" else None
    ahead_staging = HostStaging(ahead) if ahead else None  # the next layer's predicted experts
    pool = ThreadPoolExecutor(max_workers=o.io_threads, thread_name_prefix="mlxstore-io")
    fds = [os.dup(s.fd(i)) for i in range(len(s.index.shards))]  # the model's own, whoever closes `s`
    weakref.finalize(model, _release, pool, fds)  # threads and descriptors live as long as the model
    for fd in fds:  # macOS: "drop" reads around the cache (Linux drops pages after each read)
        osio.set_nocache(fd, o.page_cache == "drop")
        osio.advise_random(fd)  # a miss is read in parallel parts: readahead would fetch each part's successor again
    bank_options = BankOptions(page_cache=o.page_cache, check=o.check, fill=fill, io_threads=o.io_threads,
                               read_size=parse_size(o.read_size), copy=o.staged_copy)  # fmt: skip
    wrappers = []
    for site in sites:
        expert_group = groups[site.path]
        tensors = [s.index.tensors[n] for n in expert_group.tensors]
        bank = ExpertBank(site.path, site.module, expert_group, tensors,
                          make_policy(o.policy, plan.slots_per_layer, expert_group.num_experts),
                          fds, pool, bank_options, host_staging, ahead_staging)  # fmt: skip
        wrapper = StreamingExperts(site.module, bank, o.prefetch, passes, o.overlap, o.hits_first)
        setattr(site.parent, site.attr, wrapper)
        wrappers.append((site, wrapper))
    if o.optimistic and group is None:
        optimism = Optimism()
        for _, w in wrappers:
            set_plain(w, "optimism", optimism)
        install_optimism(model, optimism)
    if o.prefetch in ("next-layer", "next-layer-read"):
        for (site, w), (nsite, nw) in zip(wrappers, wrappers[1:]):
            if site.router is not None and nsite.router is not None and nsite.top_k:
                remember_input(site.router)
                set_plain(w, "next_layer", NextLayer(nsite.router, nsite.top_k, nw.bank, site.router))
    set_plain(model, "mlxstore_plan", plan)
    _guard(model, plan, config, o)
    return model, load_store_tokenizer(s, config, o.tokenizer_config)


def _guard(model: nn.Module, plan: Plan, config: dict, o: LoadOptions) -> None:
    """The context check of `moe.context`, per plan."""
    cache = _cache(o, model)
    per_token = kv_bytes(config, 2, plan.max_context + 1000, 1, cache) - kv_bytes(config, 2, plan.max_context, 1, cache)
    if not guard_context(model, plan.max_context, o.past_max_context, per_token):
        log.warning("mlxstore: %s has no decoder layer list; passing max_context is not checked", type(model).__module__)


def _cache(o: LoadOptions, model: nn.Module | None = None) -> CacheOptions:
    if model is None:
        return CacheOptions(o.kv_bits, o.kv_group_size, o.max_kv_size)
    return cache_options(model, o.kv_bits, o.kv_group_size, o.max_kv_size)


def _release(pool: ThreadPoolExecutor, fds: list[int]) -> None:
    pool.shutdown(wait=True)
    for fd in fds:
        os.close(fd)


def _plan(s: Store, sites, dense, config, o: LoadOptions, model: nn.Module, staging: int) -> Plan:
    dense_bytes, per_slot, num_experts, top_k = store_sizes(s, sites, dense)
    return make_plan(
        budget=o.memory_budget,
        dense_bytes=dense_bytes,
        expert_bytes=per_slot,
        num_layers=len(sites),
        num_experts=num_experts,
        top_k=top_k,
        config=config,
        itemsize=store_itemsize(s),
        max_context=o.max_context,
        headroom=o.headroom,
        slots_per_layer=o.slots_per_layer,
        reserve=o.reserve,
        prefill_step_size=o.prefill_step_size,
        cache=_cache(o, model),
        staging=staging,
    )


def kv_cache_bytes(store: Store, tokens: int, cache: CacheOptions | None = None) -> int:
    """The plan's estimate of one KV cache holding `tokens` tokens of this store's model."""
    config = model_config(store)
    model = build_model(config, store.quantization)  # lazy: no weight is read or allocated
    cache = cache or CacheOptions()
    cache = cache_options(model, cache.kv_bits, cache.kv_group_size, cache.max_kv_size)
    return kv_bytes(config, store_itemsize(store), tokens, 1, cache)


def _banks(model: nn.Module) -> dict[str, ExpertBank]:
    """Every streamed layer's bank, its optimistic calls still to be accounted first."""
    layers = [m for _, m in model.named_modules() if isinstance(m, StreamingExperts)]
    for m in layers:
        m.settle()
    return {m.bank.name: m.bank for m in layers}


def stats(model: nn.Module, reset: bool = False) -> StreamStats:
    """Hits, misses, bytes and seconds of every streamed MoE layer (a snapshot copy)."""
    from copy import copy

    banks = _banks(model)
    out = StreamStats({name: copy(b.stats) for name, b in banks.items()})
    if reset:
        reset_stats(model)
    return out


def reset_stats(model: nn.Module) -> None:
    from .stats import LayerStats

    for bank in _banks(model).values():
        bank.stats = LayerStats()


def plan_of(model: nn.Module) -> Plan | None:
    """The memory plan `load` made for this model (None when nothing streams)."""
    return getattr(model, "mlxstore_plan", None)

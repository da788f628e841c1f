"""Streamed MoE execution is bit-identical to resident mlx-lm, at every bank size."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import logits_trace, random_prompt

import mlxstore
from mlxstore import moe, osio
from mlxstore.formats import StoreError
from mlxstore.mlxlm import make_prompt_cache, make_sampler
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir, tiny_config

MOE_ARCHS = ["qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "gpt_oss", "olmoe", "qwen3_next", "glm4_moe",
             "ernie4_5_moe", "kimi_linear", "gemma4_text"]  # fmt: skip


def _num_experts(cfg: dict) -> int:
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        if key in cfg:
            return cfg[key]
    raise KeyError("no expert count")


def _top_k(cfg: dict) -> int:
    for key in ("num_experts_per_tok", "num_experts_per_token", "moe_k", "top_k_experts"):
        if key in cfg:
            return cfg[key]
    raise KeyError("no top-k")


@pytest.fixture(scope="module")
def models(model_and_store):
    """arch -> (source dir, store dir); gpt_oss in mxfp4, as it ships."""
    return {arch: model_and_store("gpt_oss-mxfp4" if arch == "gpt_oss" else arch) for arch in MOE_ARCHS}


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_streamed_logits_bit_identical(models, arch):
    src, store = models[arch]
    cfg = tiny_config(arch)
    experts, top_k = _num_experts(cfg), _top_k(cfg)
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(24)
    want = logits_trace(resident, prompt, steps=6)
    assert all(np.isfinite(w).all() for w in want), f"{arch}: the resident model's logits are not finite here"
    for slots in sorted({experts, max(top_k, experts // 2), top_k}, reverse=True):
        model, _ = moe.load(store, slots_per_layer=slots)
        got = logits_trace(model, prompt, steps=6)
        for w, g in zip(want, got):
            assert np.array_equal(w, g), f"{arch} slots={slots}: logits differ"
        total = moe.stats(model).total
        assert total.misses > 0
        assert total.hits + total.misses == total.requests
        if slots == top_k:  # a 24-token prompt needs more distinct experts than top-k slots
            assert total.passes > 0


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
@pytest.mark.parametrize("fill, passes, overlap, load_size, read_size, copy, hits_first", [
    ("staged", "full", False, "8MiB", "1MiB", "slices", False), ("staged", "full", True, "8MiB", "1MiB", "scatter", True),
    ("direct", "full", True, "8MiB", 4096, "slices", True), ("direct", "rows", False, "8MiB", "1MiB", "slices", False),
    ("staged", "rows", True, 1, 4096, "scatter", False), ("staged", "full", True, 1, "1MiB", "slices", False)])  # fmt: skip
def test_fill_and_pass_modes_bit_identical(models, arch, fill, passes, overlap, load_size, read_size, copy, hits_first):
    """Every way of filling slots, running passes and launching layers gives the resident
    logits (the default of this backend runs in test_streamed_logits_bit_identical);
    staged with load size 1 puts each expert in a load of its own (a call's loads outnumber
    the two staging buffers, which take turns); a small read_size splits each expert's
    read into parallel parts; a staged load is copied by slices or scattered; a call with
    misses runs its resident rows first or all at once."""
    if passes == "rows" and mx.default_device() != mx.cpu:
        pytest.skip("passes='rows' is exact only on the CPU backend (load refuses it elsewhere)")
    src, store = models[arch]
    cfg = tiny_config(arch)
    resident, _ = mlx_lm.load(str(src))
    for n, seed in ((24, 0), (5, 1)):  # sorted and unsorted switch calls
        prompt = random_prompt(n, seed=seed)
        want = logits_trace(resident, prompt, steps=4)
        for slots in (cfg["num_experts_per_tok"], _num_experts(cfg) // 2):
            model, _ = moe.load(store, slots_per_layer=slots, fill=fill, passes=passes, overlap=overlap,
                                staged_load_size=load_size, read_size=read_size, staged_copy=copy,
                                hits_first=hits_first)  # fmt: skip
            got = logits_trace(model, prompt, steps=4)
            what = f"{arch} {fill}/{passes}/{overlap}/{load_size}/{read_size}/{copy}/{hits_first} slots={slots}"
            assert all(np.array_equal(w, g) for w, g in zip(want, got)), what


def test_overlap_launches_each_streamed_layer(models, monkeypatch):
    """overlap=True launches every streamed decode layer at once (mx.async_eval); False
    leaves its kernels to the next host sync: no launch of its own."""
    src, store = models["qwen3_moe"]
    launches: list = []
    real = mx.async_eval
    monkeypatch.setattr(mx, "async_eval", lambda *a: (launches.append(1), real(*a))[1])
    counts = {}
    for overlap in (True, False):
        model, _ = moe.load(store, slots_per_layer=_num_experts(tiny_config("qwen3_moe")) // 2,
                            fill="direct", passes="full", overlap=overlap)  # fmt: skip
        cache = make_prompt_cache(model)
        mx.eval(model(random_prompt(5, seed=0), cache=cache))
        launches.clear()
        mx.eval(model(mx.array([[7]]), cache=cache))
        counts[overlap] = len(launches)
    assert counts == {True: tiny_config("qwen3_moe")["num_hidden_layers"], False: 0}


def test_rows_passes_refused_off_the_cpu(models, monkeypatch):
    """"rows" computes subsets of a call's rows, exact only where each row is computed
    alone: on a GPU backend load says so instead of streaming inexactly."""
    from mlxstore.moe import OptionError

    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)
    with pytest.raises(OptionError, match="rows.*CPU"):
        moe.load(models["qwen3_moe"][1], slots_per_layer=4, passes="rows")


class _ShapeSpy:
    """Records the (x, indices) shapes of every call of a switch module."""

    def __init__(self, module, log: list):
        self.module, self.log = module, log

    def __call__(self, x, indices):
        self.log.append((tuple(x.shape), tuple(indices.shape)))
        return self.module(x, indices)


def _spy_switches(model) -> list:
    from mlxstore.switches import find_switches

    log: list = []
    for site in find_switches(model):
        setattr(site.parent, site.attr, _ShapeSpy(getattr(site.parent, site.attr), log))
    return log


@pytest.mark.parametrize("hits_first", [False, True])
@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_switch_calls_keep_resident_shapes(models, arch, hits_first):
    """Kernels are chosen by call shape (CUDA's gather_qmm changes kernel at 8 rows), so the
    streamed model calls each switch module with exactly the resident call's shapes, at
    every bank size: a hit/miss split or a pass over a subset of rows would change them."""
    src, store = models[arch]
    cfg = tiny_config(arch)
    resident, _ = mlx_lm.load(str(src))
    want = _spy_switches(resident)
    prompt = random_prompt(24)
    logits_trace(resident, prompt, steps=4)
    for slots in (cfg["num_experts_per_tok"], _num_experts(cfg) // 2, _num_experts(cfg)):
        model, _ = moe.load(store, slots_per_layer=slots, passes="full", hits_first=hits_first)
        got = []
        for _, m in model.named_modules():
            if hasattr(m, "bank"):
                m.inner = _ShapeSpy(m.inner, got)
        logits_trace(model, prompt, steps=4)
        assert set(got) == set(want), f"slots={slots}"
        assert moe.stats(model).total.misses > 0


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_generate_same_tokens_greedy_and_sampled(models, arch):
    src, store = models[arch]
    resident, tokenizer = mlx_lm.load(str(src))
    top_k = tiny_config(arch)["num_experts_per_tok"]
    model, tok2 = moe.load(store, slots_per_layer=top_k)
    prompt = "w5 w9 w17 w33 w65"
    kw = dict(max_tokens=12, verbose=False)
    assert mlx_lm.generate(model, tok2, prompt, **kw) == mlx_lm.generate(resident, tokenizer, prompt, **kw)
    outs = []
    for m, t in ((resident, tokenizer), (model, tok2)):
        mx.random.seed(7)
        sampler = make_sampler(temp=0.8, top_p=0.95)
        outs.append([r.token for r in mlx_lm.stream_generate(m, t, prompt, max_tokens=12, sampler=sampler)])
    assert outs[0] == outs[1]


def _record_order(monkeypatch, log: list) -> None:
    """Appends ("launch", bank) / ("read", bank) / ("copy", bank) / ("sync", None) to `log`
    as banks launch slot readers, read misses, queue staged copies, and MLX synchronizes."""
    from mlxstore.moe.bank import ExpertBank

    for name, what in (("launch", "launch"), ("_read_all", "read"), ("_copy_load", "copy")):
        real = getattr(ExpertBank, name)
        monkeypatch.setattr(ExpertBank, name, lambda self, *a, _r=real, _w=what: (log.append((_w, self)), _r(self, *a))[1])
    sync = mx.synchronize
    monkeypatch.setattr(mx, "synchronize", lambda *a: (log.append(("sync", None)), sync(*a))[1])


@pytest.mark.parametrize("hits_first", [False, True])
def test_staged_copies_wait_for_launched_readers(models, monkeypatch, hits_first):
    """A staged copy into a bank whose slots a launched kernel may still read would copy the
    whole bank array on a GPU (donation is decided when the copy is encoded), past the
    budget: after each pass, or the resident rows of a call that runs them first, the next
    copies into that bank wait for it (one synchronize), while the reads before them do
    not. Passes launch each group before the next is read; hits_first launches the
    resident rows before any miss of the call is read."""
    _, store = models["qwen3_moe"]
    log: list = []
    model, _ = moe.load(store, slots_per_layer=4, fill="staged", passes="full", hits_first=hits_first)
    _record_order(monkeypatch, log)
    logits_trace(model, random_prompt(24), steps=4)
    monkeypatch.undo()
    launched: set = set()
    kinds = {k for k, _ in log}
    assert {"launch", "read", "copy", "sync"} <= kinds
    for kind, bank in log:
        if kind == "sync":
            launched.clear()
        elif kind == "launch":
            launched.add(bank)
        elif kind == "copy":
            assert bank not in launched, "a copy was queued into a bank a launched kernel may still read"
    assert moe.stats(model).total.passes > 0
    if hits_first:  # a decode call with misses: its resident rows launch before its reads
        decode = log[next(i for i, (k, _) in enumerate(log) if k == "sync"):]
        assert any(a == ("launch", b[1]) and b[0] == "read" for a, b in zip(decode, decode[1:]))


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_a_miss_is_read_in_parts_of_read_size(models, monkeypatch, fill):
    """Each missed extent is one read per part: min(io_threads, length // read_size) parts."""
    _, store = models["qwen3_moe"]
    with mlxstore.open(store) as s:
        length = next(iter(s.expert_groups.values())).extents[0].length
    read_size, threads = length // 5, 3
    sizes = []
    real = osio.read_extent_into
    monkeypatch.setattr(osio, "read_extent_into", lambda fd, off, bufs, what="": sizes.append(real(fd, off, bufs, what)) or sizes[-1])
    model, _ = moe.load(store, slots_per_layer=4, fill=fill, read_size=read_size, io_threads=threads)
    sizes.clear()
    logits_trace(model, random_prompt(8), steps=2)
    misses = moe.stats(model).total.misses
    assert misses and len(sizes) == misses * threads and sum(sizes) == misses * length
    assert min(sizes) >= read_size
    sizes.clear()
    model, _ = moe.load(store, slots_per_layer=4, fill=fill, read_size=length + 1)
    sizes.clear()
    logits_trace(model, random_prompt(8), steps=2)
    assert len(sizes) == moe.stats(model).total.misses and set(sizes) == {length}


def test_reads_are_exact(models):
    _, store = models["qwen3_moe"]
    model, _ = moe.load(store, slots_per_layer=4)
    logits_trace(model, random_prompt(8), steps=4)
    st = moe.stats(model)
    s = mlxstore.open(store)
    for name, layer in st.layers.items():
        group = s.expert_groups[name]
        assert len({x.length for x in group.extents}) == 1
        assert layer.bytes_read == layer.misses * group.extents[0].length
        assert layer.prefetch_issued == 0


def test_next_layer_prefetch_is_exact_and_counted(models):
    src, store = models["qwen3_moe"]
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(12, seed=3)
    want = logits_trace(resident, prompt, steps=4)
    extent = {name: g.extents[0].length for name, g in mlxstore.open(store).expert_groups.items()}
    for mode in ("next-layer", "temporal"):
        model, _ = moe.load(store, slots_per_layer=4, prefetch=mode, page_cache="drop")
        got = logits_trace(model, prompt, steps=4)
        assert all(np.array_equal(w, g) for w, g in zip(want, got))
        st = moe.stats(model)
        assert st.total.prefetch_issued > 0, mode  # 4 of the layer's experts fit: some are hinted
        for name, layer in st.layers.items():  # every hint is one whole expert extent, counted once
            assert layer.prefetch_bytes == layer.prefetch_issued * extent[name]
            assert layer.prefetch_used <= layer.prefetch_issued


def test_budget_too_small_says_minimum(models):
    _, store = models["mixtral"]
    with pytest.raises(StoreError, match="too small: at least"):
        moe.load(store, memory_budget="1KB")


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_budget_derives_slots(models, fill):
    _, store = models["qwen3_moe"]
    model, _ = moe.load(store, slots_per_layer=6, headroom=64 << 20, fill=fill)
    six = moe.plan_of(model)  # everything six slots take, staging buffers included
    model, _ = moe.load(store, memory_budget=six.total_bytes, headroom=64 << 20,
                        prefill_step_size=six.prefill_step_size, fill=fill)  # fmt: skip
    assert moe.plan_of(model).slots_per_layer == 6
    assert "budget" in moe.plan_of(model).describe()


def test_store_without_experts_loads_resident(tmp_path, caplog):
    src = make_model_dir("llama", tmp_path / "src")
    store = pack(src, tmp_path / "llama.store", progress=False)
    with caplog.at_level("WARNING", logger="mlxstore"):
        model, _ = moe.load(store, slots_per_layer=2)
    assert "no experts to stream" in caplog.text
    assert moe.stats(model).layers == {}
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(5)
    assert np.array_equal(np.array(model(prompt).astype(mx.float32)), np.array(resident(prompt).astype(mx.float32)))


def test_failed_read_leaves_bank_consistent(models, monkeypatch):
    src, store = models["olmoe"]
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(10, seed=5)
    want = np.array(resident(prompt).astype(mx.float32))
    model, _ = moe.load(store, slots_per_layer=4)
    real = osio.read_extent_into
    calls = {"n": 0}

    def flaky(fd, offset, buffers, what="store file"):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            for b in buffers:  # scribble first: a half-filled slot must not be trusted later
                memoryview(b).cast("B")[:] = b"\xff" * memoryview(b).nbytes
            raise StoreError(f"{what}: short read (injected)")
        return real(fd, offset, buffers, what)

    monkeypatch.setattr(osio, "read_extent_into", flaky)
    with pytest.raises(StoreError, match="injected"):
        model(prompt)
    monkeypatch.setattr(osio, "read_extent_into", real)
    got = np.array(model(prompt).astype(mx.float32))
    assert np.array_equal(want, got)


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_peak_memory_within_budget(tmp_path, fill):
    """Experts several times the budget stream within budget + a small stated overhead
    (staged: with staging buffers no larger than the slots can use)."""
    arch = "qwen3_moe"
    overrides = {"num_experts": 64, "moe_intermediate_size": 256, "num_hidden_layers": 4, "hidden_size": 256}
    src = make_model_dir(arch, tmp_path / "src", config_overrides=overrides, seed=2)
    store = pack(src, tmp_path / "big.store", progress=False)
    s = mlxstore.open(store)
    expert_total = sum(s.index.tensors[n].nbytes for n in s.tensor_names if s.index.tensors[n].expert_group)
    dense = sum(s.index.tensors[n].nbytes for n in s.tensor_names if not s.index.tensors[n].expert_group)
    budget = dense + expert_total // 4
    mx.clear_cache()
    mx.reset_peak_memory()
    model, _ = moe.load(store, memory_budget=budget, max_context=64, headroom=256 << 10, fill=fill)
    plan = moe.plan_of(model)
    assert plan.slots_per_layer < 64 // 3
    logits_trace(model, random_prompt(16), steps=8)
    overhead = 4 << 20  # activations and allocator slack of this tiny model
    assert mx.get_peak_memory() <= budget + overhead
    assert moe.stats(model).total.misses > 0


def test_prompt_cache_reused_across_calls(models):
    src, store = models["mixtral"]
    resident, tokenizer = mlx_lm.load(str(src))
    model, tok2 = moe.load(store, slots_per_layer=2)
    outs = []
    for m, t in ((resident, tokenizer), (model, tok2)):
        cache = make_prompt_cache(m)
        first = [r.token for r in mlx_lm.stream_generate(m, t, "w1 w2 w3", max_tokens=5, prompt_cache=cache)]
        second = [r.token for r in mlx_lm.stream_generate(m, t, "w4 w5", max_tokens=5, prompt_cache=cache)]
        outs.append((first, second))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_long_prompt_passes_bit_identical(models, arch):
    """Passes whose rows exceed mlx-lm's sorting threshold, and ones padded up to it."""
    src, store = models[arch]
    top_k = tiny_config(arch)["num_experts_per_tok"]
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(90, seed=11)
    want = logits_trace(resident, prompt, steps=2)
    model, _ = moe.load(store, slots_per_layer=top_k)
    got = logits_trace(model, prompt, steps=2)
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    assert moe.stats(model).total.passes > 0


def test_all_resident_layers_decode_without_host_sync(models, monkeypatch):
    """Once a layer holds every expert for good, decode maps ids on the device."""
    src, store = models["qwen3_moe"]
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(90, seed=4)
    want = logits_trace(resident, prompt, steps=4)
    model, _ = moe.load(store, slots_per_layer=16)
    banks = [m.bank for _, m in model.named_modules() if hasattr(m, "bank")]
    for seed in range(20):  # random weights leave some experts unused for a while
        if all(b.fixed_slots is not None for b in banks):
            break
        mx.eval(model(random_prompt(90, seed=100 + seed)))
    assert all(b.fixed_slots is not None for b in banks)
    cache = make_prompt_cache(model)
    first = np.array(model(prompt, cache=cache).astype(mx.float32))
    monkeypatch.setattr(np, "unique", lambda *a, **k: pytest.fail("host sync on the fixed path"))
    got = [first]
    token = mx.argmax(mx.array(first[:, -1:]), axis=-1)
    for _ in range(4):
        logits = model(token, cache=cache)
        got.append(np.array(logits.astype(mx.float32)))
        token = mx.argmax(logits[:, -1:], axis=-1)
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    total = moe.stats(model).total
    assert total.hits + total.misses == total.requests


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_page_cache_drop_leaves_read_experts_uncached(models, fill):
    """page_cache="drop" hands each read expert's pages back (on the read pool, which the
    model's release waits for), so a store read warm ends with its missed extents uncached."""
    import gc
    import os

    from bench.harness.rawdisk import cached_fraction
    from bench.harness.worker import _banks, shard_paths

    _, store = models["olmoe"]
    files = shard_paths(str(store))
    for f in files:
        open(f, "rb").read()
    before = sum(cached_fraction(f) or 0 for f in files)
    if before < len(files) - 0.01:
        pytest.skip("mincore unavailable or the store does not stay cached")
    model, _ = moe.load(store, slots_per_layer=2, fill=fill, page_cache="drop")
    read = set()  # (group, expert) of every miss: the extents that must end uncached
    for bank in _banks(model):
        def fill(misses, _fill=bank.fill, _group=bank.group):
            read.update((_group, e) for e, _ in misses)
            return _fill(misses)

        bank.fill = fill
    logits_trace(model, random_prompt(6, seed=5), steps=3)
    distinct = sum(group.extents[e].length for group, e in read)
    del model, fill
    gc.collect()  # the model's release joins the pool: every drop has run
    dropped = sum((1 - (cached_fraction(f) or 0)) * os.path.getsize(f) for f in files)
    if dropped == 0:
        pytest.skip("this filesystem keeps pages after DONTNEED")
    assert distinct > 0
    assert dropped >= 0.95 * distinct

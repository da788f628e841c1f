"""What a memory budget buys, predicted from real routing: hit rate, disk reads, tok/s.

Why: the slots a budget buys are known before loading (the plan), but what they are
worth depends on how the model routes. Replaying a routing trace (recorded with
`mlxstore generate --record-trace`, or a bundled one) through each slot policy at a
range of budgets gives, per budget, the hit rate and the expert bytes missed per token;
a short read probe of the store's own disk turns those into seconds, and the resident
compute time per token (when given) completes the prediction.

Mapping a trace onto a model: the trace's experts per layer must equal the model's
(ids of another expert set mean nothing; an error says so). The model's MoE layer n
replays trace layer n mod the trace's layer count (noted when the counts differ); rows
with more experts per token than the model's top-k keep their first k, rows with fewer
are padded as `moe.replay` pads them (noted). Each layer's cache starts empty; the
scenario says which rows are replayed and which count (`SCENARIOS`). A prompt is
replayed one token at a time, as the trace records it.

Prediction: per token, reads take missed bytes / disk speed. Streaming overlaps a
layer's reads only with the same layer's resident rows, so `tok_s` = 1 / (compute +
reads) is the safe figure and `tok_s_overlap` = 1 / max(compute, reads) the bound a
perfect overlap would reach; without a compute time both are the disk-bound 1 / reads.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from mlxstore import osio
from mlxstore.formats import StoreError
from mlxstore.formats.route_trace import GENERATION, PROMPT, RouteTrace
from mlxstore.sizes import format_size

from .policy import DEFAULT_POLICY, POLICIES, belady_hits, make_policy, replay_hits

GIB = 1 << 30
OPTIMUM = "belady"  # the offline optimum, reported beside the policies as the bound
# name -> (phases replayed, phases whose hits count). "gen": generation rows from an
# empty cache; "all": prompt rows count too; "warm": the prompt warms the cache, decode counts.
SCENARIOS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "gen": ((GENERATION,), (GENERATION,)),
    "all": ((PROMPT, GENERATION), (PROMPT, GENERATION)),
    "warm": ((PROMPT, GENERATION), (GENERATION,)),
}


@dataclass(frozen=True)
class AdviseOptions:
    """What to replay and how to predict. budgets: bytes (None: `points` budgets from the
    minimum to the one at which every expert fits). disk_gbps: skip the read probe.
    compute_ms: resident compute per token. probe_seconds: the probe's time cap."""

    policies: tuple[str, ...] = tuple(POLICIES) + (OPTIMUM,)
    budgets: tuple[int, ...] | None = None
    points: int = 12
    scenario: str = "warm"
    disk_gbps: float | None = None
    compute_ms: float | None = None
    probe_seconds: float = 1.0
    probe_reads: int = 256
    io_threads: int = 4
    seed: int = 0


@dataclass(frozen=True)
class ModelShape:
    """What replay needs of a model: its MoE layers, experts, top-k and bytes per expert."""

    num_layers: int
    num_experts: int
    top_k: int
    read_bytes: tuple[int, ...]  # bytes a miss reads in each MoE layer (one extent)


@dataclass
class Replay:
    """One layer's calls, and which of them count towards the hit rate."""

    calls: list[tuple[int, ...]]
    counted: list[bool]

    @property
    def accesses(self) -> int:
        return sum(len(set(c)) for c, k in zip(self.calls, self.counted) if k)


@dataclass
class Row:
    policy: str
    budget: int
    slots: int
    hit_rate: float
    missed_mb_per_token: float
    read_ms_per_token: float
    tok_s: float | None
    tok_s_overlap: float | None


@dataclass
class Advice:
    trace: str
    scenario: str
    tokens: int  # counted tokens per layer
    disk_gbps: float
    disk_measured: bool
    compute_ms: float | None
    default_policy: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    knee: Row | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def replays(trace: RouteTrace, phases: Sequence[int], count: Sequence[int]) -> list[Replay]:
    """Per trace layer: its calls in the chosen phases, and which count."""
    out = []
    for layer in range(trace.n_layer):
        steps = [s for s in trace.steps if s.phase in phases and s.experts[layer]]
        out.append(Replay([s.experts[layer] for s in steps], [s.phase in count for s in steps]))
    return out


def policy_hits(layers: Sequence[Replay], name: str, num_slots: int, num_experts: int) -> list[int]:
    """Counted hits of a fresh cache per layer (the optimum for `OPTIMUM`)."""
    if name == OPTIMUM:
        return [belady_hits(r.calls, num_slots, r.counted) for r in layers]
    return [replay_hits(make_policy(name, num_slots, num_experts), r.calls, r.counted) for r in layers]


def map_trace(trace: RouteTrace, shape: ModelShape, scenario: str = "warm") -> tuple[list[Replay], list[str]]:
    """The trace's calls for each of the model's MoE layers, and notes on how they were mapped.

    ValueError (one line) when the trace's experts per layer differ from the model's.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {sorted(SCENARIOS)}")
    if trace.n_expert != shape.num_experts:
        raise ValueError(f"the trace routes over {trace.n_expert} experts per layer, the model has "
                         f"{shape.num_experts}: replay needs a trace of this model "
                         "(record one with `mlxstore generate --record-trace FILE`)")  # fmt: skip
    phases, count = SCENARIOS[scenario]
    source = replays(trace, phases, count)
    notes = []
    if trace.n_layer != shape.num_layers:
        notes.append(f"the trace has {trace.n_layer} MoE layers, the model {shape.num_layers}: "
                     f"model layer n replays trace layer n mod {trace.n_layer}")  # fmt: skip
    if trace.top_k != shape.top_k:
        how = (f"keep their first {shape.top_k}" if trace.top_k > shape.top_k
               else "are padded with the layer's frequently used experts")  # fmt: skip
        notes.append(f"the trace has {trace.top_k} experts per token, the model {shape.top_k}: rows {how}")
    out = []
    for n in range(shape.num_layers):
        r = source[n % trace.n_layer]
        if not r.calls:
            raise ValueError(f"trace layer {n % trace.n_layer} has no rows in scenario {scenario!r}")
        calls = r.calls
        if trace.top_k > shape.top_k:
            calls = [c[: shape.top_k] for c in calls]
        elif trace.top_k < shape.top_k:
            from .replay import pad_rows

            calls = [tuple(row) for row in pad_rows(calls, shape.top_k, shape.num_experts, n).tolist()]
        out.append(Replay(list(calls), list(r.counted)))
    return out, notes


@dataclass(frozen=True)
class DiskProbe:
    reads: int
    bytes: int
    seconds: float

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


def probe_reads(store, *, seconds: float = 1.0, max_reads: int = 256, threads: int = 4, seed: int = 0) -> DiskProbe:
    """Read random expert extents of `store` as a miss does (scatter `preadv`, `threads` at once,
    page cache dropped first) for at most `seconds` (or `max_reads` extents)."""
    extents = [(g.prefix, e) for g in store.expert_groups.values() for e in g.extents]
    if not extents:
        raise ValueError(f"{store.path.parent}: no experts to read")
    rng = random.Random(seed)
    picks = rng.sample(extents, min(max_reads, len(extents)))
    # descriptors of its own: macOS' no-cache flag would otherwise change the store's
    fds = [os.open(store.path.parent / s.name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)) for s in store.index.shards]
    for fd in fds:
        osio.set_nocache(fd, True)

    def read(pick) -> int:
        prefix, extent = pick
        fd = fds[extent.shard]
        osio.advise_dontneed(fd, extent.offset, extent.length)
        return osio.read_extent_into(fd, extent.offset, [bytearray(extent.length)], what=f"{prefix} probe")

    done = nbytes = 0
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            while done < len(picks) and time.perf_counter() - start < seconds:
                batch = picks[done : done + threads]
                nbytes += sum(pool.map(read, batch))
                done += len(batch)
    finally:
        for fd in fds:
            os.close(fd)
    return DiskProbe(done, nbytes, time.perf_counter() - start)


def _predict(missed_bytes: float, gbps: float, compute_ms: float | None) -> tuple[float, float | None, float | None]:
    read_s = missed_bytes / (gbps * 1e9) if gbps > 0 else float("inf")
    compute_s = (compute_ms or 0.0) / 1000
    serial = compute_s + read_s
    overlap = max(compute_s, read_s)
    return read_s * 1000, (1 / serial if serial > 0 else None), (1 / overlap if overlap > 0 else None)


def knee(xs: Sequence[float], ys: Sequence[float]) -> int:
    """Index of the knee of a rising curve: the point farthest above the chord (Kneedle)."""
    if len(xs) < 3:
        return len(xs) - 1
    x0, x1, y0, y1 = xs[0], xs[-1], min(ys), max(ys)
    if x1 == x0 or y1 == y0:
        return 0
    gaps = [(y - y0) / (y1 - y0) - (x - x0) / (x1 - x0) for x, y in zip(xs, ys)]
    return max(range(len(gaps)), key=gaps.__getitem__)


def advise(trace: RouteTrace, shape: ModelShape, slots_at: Callable[[int], int], budgets: Sequence[int],
           options: AdviseOptions = AdviseOptions(), *, disk_gbps: float, disk_measured: bool = False,
           name: str = "") -> Advice:  # fmt: skip
    """Replay `trace` through each policy at each budget (`slots_at(budget)` slots per layer)."""
    layers, notes = map_trace(trace, shape, options.scenario)
    counted_tokens = max(sum(r.counted) for r in layers)
    accesses = [r.accesses for r in layers]
    total = sum(accesses)
    if not total:
        raise ValueError(f"the trace has no rows that count in scenario {options.scenario!r}")
    unknown = [p for p in options.policies if p != OPTIMUM and p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; choose from {sorted(POLICIES) + [OPTIMUM]}")
    default = DEFAULT_POLICY if DEFAULT_POLICY in options.policies else options.policies[0]
    advice = Advice(name or trace.model, options.scenario, counted_tokens, disk_gbps, disk_measured,
                    options.compute_ms, default, notes=notes)  # fmt: skip
    for budget in budgets:
        slots = slots_at(budget)
        for policy in options.policies:
            hits = policy_hits(layers, policy, slots, shape.num_experts)
            missed = sum((a - h) * b for a, h, b in zip(accesses, hits, shape.read_bytes)) / counted_tokens
            read_ms, tok_s, tok_s_overlap = _predict(missed, disk_gbps, options.compute_ms)
            advice.rows.append(Row(policy, int(budget), slots, sum(hits) / total, missed / 1e6, read_ms,
                                   tok_s, tok_s_overlap))  # fmt: skip
    curve = [r for r in advice.rows if r.policy == default]
    if curve:
        advice.knee = curve[knee([r.budget for r in curve], [r.hit_rate for r in curve])]
    return advice


def format_advice(advice: Advice) -> str:
    """The table users read: one line per budget, hit rate and tok/s per policy."""
    src = "measured" if advice.disk_measured else "given"
    compute = f"{advice.compute_ms:g} ms compute per token" if advice.compute_ms is not None else "no compute time given: disk-bound"
    lines = [f"trace {advice.trace}: {advice.tokens} tokens counted ({advice.scenario}); "
             f"disk {advice.disk_gbps:.2f} GB/s ({src}); {compute}"]  # fmt: skip
    lines += [f"note: {n}" for n in advice.notes]
    policies = list(dict.fromkeys(r.policy for r in advice.rows))
    lines.append(f"{'budget':>10} {'slots':>5} {'MB/tok':>8} {'tok/s':>8} " +
                 " ".join(f"{p:>8}" for p in policies) + f"   (hit rate; MB/tok and tok/s of {advice.default_policy})")  # fmt: skip
    by_budget: dict[int, list[Row]] = {}
    for r in advice.rows:
        by_budget.setdefault(r.budget, []).append(r)
    for budget, rows in by_budget.items():
        d = next((r for r in rows if r.policy == advice.default_policy), rows[0])
        mark = "  <- knee" if advice.knee is not None and advice.knee.budget == budget else ""
        tok = f"{d.tok_s:8.2f}" if d.tok_s is not None else f"{'-':>8}"
        lines.append(f"{format_size(budget):>10} {d.slots:>5} {d.missed_mb_per_token:8.2f} {tok} " +
                     " ".join(f"{r.hit_rate:8.3f}" for r in rows) + mark)  # fmt: skip
    return "\n".join(lines)


def plot_advice(advice: Advice, out: str | os.PathLike) -> None:
    """Hit rate and predicted tok/s against the budget, one line per policy, knee marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("drawing the plot needs matplotlib: pip install 'mlxstore[plot]'") from None
    fig, (ax_hit, ax_tok) = plt.subplots(1, 2, figsize=(11, 4.2))
    policies = list(dict.fromkeys(r.policy for r in advice.rows))
    for p in policies:
        rows = [r for r in advice.rows if r.policy == p]
        xs = [r.budget / GIB for r in rows]
        style = {"linewidth": 2.4} if p == advice.default_policy else {"linewidth": 1, "alpha": 0.8}
        dash = "--" if p == OPTIMUM else "-"
        ax_hit.plot(xs, [r.hit_rate for r in rows], dash, marker=".", label=p, **style)
        if all(r.tok_s is not None for r in rows):
            ax_tok.plot(xs, [r.tok_s for r in rows], dash, marker=".", label=p, **style)
    if advice.knee is not None:
        k = advice.knee
        for ax, y in ((ax_hit, k.hit_rate), (ax_tok, k.tok_s)):
            ax.axvline(k.budget / GIB, color="grey", linestyle=":")
            if y is not None:
                ax.plot([k.budget / GIB], [y], "o", color="black", markersize=8, fillstyle="none")
        ax_hit.annotate(f"knee: {format_size(k.budget)}, {k.slots} slots", (k.budget / GIB, k.hit_rate),
                        textcoords="offset points", xytext=(8, -14))  # fmt: skip
    ax_hit.set(xlabel="memory budget (GiB)", ylabel="expert hit rate", title=f"hit rate ({advice.scenario})")
    compute = f"{advice.compute_ms:g} ms compute + " if advice.compute_ms is not None else ""
    ax_tok.set(xlabel="memory budget (GiB)", ylabel="predicted decode tok/s",
               title=f"tok/s: {compute}reads at {advice.disk_gbps:.2f} GB/s")  # fmt: skip
    ax_hit.legend(fontsize=8)
    fig.suptitle(f"mlxstore plan: {advice.trace}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ from a model


def shape_of(spec, store=None) -> ModelShape:
    """A `moe.spec.ModelSpec`'s MoE layers, experts and top-k; the bytes a miss reads per
    layer from the store's extents (alignment included), or the spec's bytes per expert
    when there is no store (a config.json alone)."""
    if store is not None:
        groups = sorted(store.expert_groups.values(), key=lambda g: _natural_key(g.prefix))
        read = tuple(sum(x.length for x in g.extents) // g.num_experts for g in groups)
    else:
        read = (spec.expert_bytes // spec.num_layers,) * spec.num_layers
    if len(read) != spec.num_layers:
        raise ValueError(f"{spec.source}: {len(read)} expert groups for {spec.num_layers} MoE layers")
    return ModelShape(spec.num_layers, spec.num_experts, spec.top_k, read)


def least_budget(plan_at, good=lambda plan: True) -> int | None:
    """`moe.plan.smallest_budget`, refined to the byte (small models span few MiB)."""
    from .plan import smallest_budget

    high = smallest_budget(plan_at, good)
    if high is None:
        return None

    def ok(budget: int) -> bool:
        try:
            return good(plan_at(budget))
        except StoreError:
            return False

    lo, hi = max(0, high - (1 << 20)), high
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def budget_range(spec, points: int, **plan_kw) -> list[int]:
    """`points` budgets from the minimum to the one at which every expert has a slot.

    The top end is found at the minimum's prefill step: a larger budget may buy a larger
    step (more activation memory) before more slots, so slots alone do not rise steadily
    with the budget; each budget's row still shows the plan `moe.load` would make there.
    """

    def plan_at(budget):
        return spec.plan(budget, **plan_kw)

    low = least_budget(plan_at)
    if low is None:
        raise ValueError(f"{spec.source}: no budget up to 1 PiB holds this model's plan")
    step = {"prefill_step_size": plan_at(low).prefill_step_size, **plan_kw}
    high = least_budget(lambda b: spec.plan(b, **step), lambda p: p.slots_per_layer == p.num_experts)
    if low is None or high is None:
        raise ValueError(f"{spec.source}: no budget up to 1 PiB holds this model's plan")
    n = max(2, points)
    return sorted({low + (high - low) * i // (n - 1) for i in range(n)})


def advise_model(spec, trace: RouteTrace, options: AdviseOptions = AdviseOptions(), *, store=None,
                 name: str = "", **plan_kw) -> Advice:  # fmt: skip
    """`advise` for a model spec: its plan (plan_kw as `ModelSpec.plan` takes them) at each
    budget; the store's disk is probed unless `options.disk_gbps` is given (needed without
    a store)."""
    shape = shape_of(spec, store)
    map_trace(trace, shape, options.scenario)  # a mismatch fails before the probe reads anything
    budgets = list(options.budgets) if options.budgets else budget_range(spec, options.points, **plan_kw)
    gbps, measured = options.disk_gbps, False
    if gbps is None:
        if store is None:
            raise ValueError(f"{spec.source} is a config, not a store: there is no disk to probe; "
                             "pass the disk's read speed (--disk-gbps)")  # fmt: skip
        probe = probe_reads(store, seconds=options.probe_seconds, max_reads=options.probe_reads,
                            threads=options.io_threads, seed=options.seed)  # fmt: skip
        if not probe.reads:
            raise ValueError(f"the read probe read nothing in {options.probe_seconds} s; give it longer or pass --disk-gbps")
        gbps, measured = probe.gbps, True

    def slots_at(budget: int) -> int:
        return spec.plan(budget, **plan_kw).slots_per_layer

    return advise(trace, shape, slots_at, budgets, options, disk_gbps=gbps, disk_measured=measured, name=name)


def advise_store(store, trace: RouteTrace, options: AdviseOptions = AdviseOptions(), *, name: str = "",
                 **plan_kw) -> Advice:  # fmt: skip
    """`advise_model` for an open store (its spec read from the index, its disk probed)."""
    from .spec import from_store

    return advise_model(from_store(store), trace, options, store=store, name=name, **plan_kw)


def _natural_key(path: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]

"""Routing replay: MoE layers take their expert ids from a recorded trace, not their router.

Why: random-weight models route unlike real ones (degenerately or uniformly), so cache
and I/O figures measured on them mislead. Replaying a real model's routing makes the
expert access pattern (hits, misses, reads) that model's. The router still runs (its cost
is paid and its scores weight the outputs); only the ids handed to the switch module are
replaced, before any slot mapping, so a streamed model and a resident one replay alike.

Mapping: the n-th MoE layer of the model replays trace layer n mod trace.n_layer; a call
of T tokens consumes the next T steps of the trace (wrapping around at its end); a trace
with more experts per token than the model keeps its first k (rank order); one with fewer
is padded with distinct ids drawn (seeded, no host sync) in proportion to how often the
trace used each expert in that layer, so padding looks like popular experts, not noise.

Timing realism: a streamed layer must read router ids to the host before it can map
slots (one sync per layer); substituted ids are host data already, so the wrapper makes
that sync itself on the router's ids (`sync`, default on for StreamingExperts, off for a
resident switch, which never syncs) and times it (`sync_seconds`: compute waited for). A
layer in an optimistic step (moe.optimistic) makes no sync, and neither does its wrapper;
if the step runs again, the wrapper's cursor goes back with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxstore.formats.route_trace import GENERATION, RouteTrace
from mlxstore.mlxlm import SWITCH_TYPES
from mlxstore.switches import SwitchSite, find_switches, num_experts

from .plain import set_plain
from .streaming import StreamingExperts, optimism_of
from .wrapper import Wrapper


class ReplayedExperts(Wrapper):
    """Wraps a switch module (or StreamingExperts); feeds it trace ids instead of router ids."""

    def __init__(self, inner: nn.Module, calls: list[tuple[int, ...]], num_experts: int,
                 seed: int, record: bool = False, sync: bool | None = None):  # fmt: skip
        super().__init__(inner)
        if sync is None:
            sync = isinstance(inner, StreamingExperts)
        set_plain(self, "num_experts", num_experts)
        set_plain(self, "sync", sync)
        set_plain(self, "sync_seconds", 0.0)
        set_plain(self, "_calls", calls)
        set_plain(self, "_seed", seed)
        set_plain(self, "_tables", {})
        set_plain(self, "cursor", 0)
        set_plain(self, "log", [] if record else None)

    def table(self, k: int) -> np.ndarray:
        """`[steps, k]` expert ids: trace rows cut or padded to k (built once per k)."""
        tables: dict[int, np.ndarray] = self._tables
        if k not in tables:
            tables[k] = pad_rows(self._calls, k, self.num_experts, self._seed)
        return tables[k]

    def take(self, tokens: int, k: int) -> np.ndarray:
        """The next `tokens` rows of the table, wrapping around; advances the cursor."""
        rows = self.peek(tokens, k)
        set_plain(self, "cursor", (self.cursor + tokens) % self.table(k).shape[0])
        return rows

    def peek(self, tokens: int, k: int) -> np.ndarray:
        """The rows the next call of `tokens` tokens will take (the cursor stays)."""
        table = self.table(k)
        return table[np.arange(self.cursor, self.cursor + tokens) % table.shape[0]]

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        inner = self.inner
        fixed = isinstance(inner, StreamingExperts) and inner.bank.fixed_slots is not None
        optimism = optimism_of(inner)
        if optimism is not None:  # a step run again replays the same rows
            cursor, logged = self.cursor, None if self.log is None else len(self.log)
            optimism.on_undo(lambda: self._rewind_to(cursor, logged))
            if self.sync:
                optimism.wait_for(indices)
        elif self.sync and not (fixed and indices.size == indices.shape[-1]):
            # the host sync the streaming layer makes on real router ids (a layer holding
            # every expert maps one token's ids on the device and makes none)
            start = time.perf_counter()
            mx.eval(indices)
            set_plain(self, "sync_seconds", self.sync_seconds + time.perf_counter() - start)
        k = indices.shape[-1]
        ids = self.take(indices.size // k, k)
        if self.log is not None:
            self.log.append(ids)
        return self.inner(x, mx.array(ids.reshape(indices.shape), dtype=indices.dtype))

    def _rewind_to(self, cursor: int, logged: int | None) -> None:
        set_plain(self, "cursor", cursor)
        if logged is not None:
            del self.log[logged:]


def pad_rows(calls: Sequence[tuple[int, ...]], k: int, num_experts: int, seed: int) -> np.ndarray:
    """Rows of exactly k distinct ids: the first k of each, padded by frequency-weighted draws."""
    if not calls:
        raise ValueError("the trace has no rows for this layer in the chosen phases")
    counts = np.ones(num_experts)
    for row in calls:
        counts[list(row)] += 1
    rng = np.random.default_rng(seed)
    out = np.empty((len(calls), k), dtype=np.int64)
    for i, row in enumerate(calls):
        head = list(row[:k])
        if len(head) < k:
            p = counts.copy()
            p[head] = 0
            head += rng.choice(num_experts, size=k - len(head), replace=False, p=p / p.sum()).tolist()
        out[i] = head
    return out


def _switch_sites(model: nn.Module) -> list[SwitchSite]:
    """Outermost expert modules in layer order: a replay wrapper, StreamingExperts or a switch."""
    return find_switches(model, (ReplayedExperts, StreamingExperts, *SWITCH_TYPES))


def _num_experts(module: nn.Module) -> int:
    if isinstance(module, StreamingExperts):
        return module.bank.num_experts
    return num_experts(module)


def replay(
    model: nn.Module,
    trace: RouteTrace,
    *,
    phases: Iterable[int] = (GENERATION,),
    seed: int = 0,
    record: bool = False,
    sync: bool | None = None,
    foresight: bool = False,
) -> list[ReplayedExperts]:
    """Make every MoE layer of `model` replay `trace`; returns the wrappers in layer order.

    phases: which trace rows are replayed (generation rows by default: prompt rows of
    recorded traces are incomplete). record: keep every substituted id array in `.log`.
    sync: evaluate the router's ids before substituting (default: only streamed layers).
    foresight: next-layer prefetch predicts exactly the ids the next layer will replay,
    an upper bound on what any predictor can give (a replayed model's own router cannot
    predict a trace, so it measures only what wrong predictions cost).
    """
    sites = _switch_sites(model)
    if not sites:
        raise ValueError("the model has no MoE switch modules to replay into")
    if any(isinstance(site.module, ReplayedExperts) for site in sites):
        raise ValueError("the model already replays a trace; call restore(model) first")
    wanted = tuple(phases)
    wrappers = []
    for n, site in enumerate(sites):
        layer = n % trace.n_layer
        calls = trace.layer_calls(layer, wanted)
        experts = _num_experts(site.module)
        if trace.n_expert > experts and any(max(c) >= experts for c in calls):
            raise ValueError(f"{site.path}: the trace uses expert ids up to {trace.n_expert - 1}, "
                             f"the model's layer has {experts} experts")  # fmt: skip
        wrapper = ReplayedExperts(site.module, calls, experts, seed * 100_003 + n, record, sync)
        setattr(site.parent, site.attr, wrapper)
        wrappers.append(wrapper)
    if foresight:
        for this, after in zip(wrappers, wrappers[1:]):
            nxt = getattr(this.inner, "next_layer", None)
            if nxt is not None and isinstance(after.inner, StreamingExperts) and nxt.bank is after.inner.bank:
                nxt.predict = lambda x, after=after, k=nxt.top_k: mx.array(after.peek(x.size // x.shape[-1], k))
    return wrappers


def replayed(model: nn.Module) -> list[ReplayedExperts]:
    """The replay wrappers of `model`, in layer order (empty when it does not replay)."""
    return [s.module for s in _switch_sites(model) if isinstance(s.module, ReplayedExperts)]


def rewind(model: nn.Module, step: int = 0) -> None:
    """Restart every layer's replay at trace row `step` (e.g. before a second run)."""
    for w in replayed(model):
        set_plain(w, "cursor", step)
        set_plain(w, "sync_seconds", 0.0)


def restore(model: nn.Module) -> None:
    """Put the original switch modules back: the router decides again."""
    for site in _switch_sites(model):
        if isinstance(site.module, ReplayedExperts):
            setattr(site.parent, site.attr, site.module.inner)
            nxt = getattr(site.module.inner, "next_layer", None)
            if nxt is not None:
                nxt.predict = None  # foresight ends with the replay

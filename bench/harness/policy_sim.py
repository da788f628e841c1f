"""Replaying real routing traces through the slot policies (`python -m bench policy`, stage P6).

Why: the cache policy decides how many expert reads hit the disk; real traces (not
synthetic routers) tell which policy to ship. Each layer gets its own cache starting
empty; hits are counted over all accesses of all layers, and compared with the
offline optimum (Belady) for the same calls. The replay itself is the product's
(`mlxstore.moe.advisor`, which `mlxstore plan --trace` uses).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from mlxstore.formats.route_trace import RouteTrace
from mlxstore.moe import advisor
from mlxstore.moe.advisor import SCENARIOS, Replay, replays
from mlxstore.traces import find_trace, trace_dir, traces

SLOTS = (8, 16, 32, 64)
# mlxstore/data/traces/README.md: LRU per layer from empty, generation rows, at 8/16/32/64 slots.
README_LRU = {
    "qwen3-30b-a3b.route.csv": (0.38, 0.59, 0.80, 0.91),
    "gpt-oss-120b.route.csv": (0.49, 0.63, 0.71, 0.72),
}


def default_trace_dir() -> Path:
    """The traces bundled in the package (mlxstore/data/traces); MLXSTORE_TRACES overrides."""
    return trace_dir()


def default_traces() -> list[Path]:
    return traces()


def default_trace(name: str = "qwen3-30b-a3b") -> Path:
    """One trace by name, bundled or in MLXSTORE_TRACES (.route.csv or .route.csv.zst)."""
    return find_trace(name)


def report_name(path: Path) -> str:
    """The key a trace's results are filed under: its CSV name, compressed or not."""
    return path.name.removesuffix(".zst")


def policy_hits(layers: list[Replay], name: str, num_slots: int, num_experts: int) -> int:
    """Hits of a fresh cache per layer, summed over layers."""
    return sum(advisor.policy_hits(layers, name, num_slots, num_experts))


def optimal_hits(layers: list[Replay], num_slots: int) -> int:
    return sum(advisor.policy_hits(layers, advisor.OPTIMUM, num_slots, 1))


def serial_lru_hits(layers: list[Replay], num_slots: int) -> int:
    """LRU fed one expert at a time, as the trace README's figures were computed.

    Unlike the slot policies it may evict an expert the same token still needs, so it
    is a little worse at small caches; kept only to check the replay against the README.
    """
    hits = 0
    for r in layers:
        cache: OrderedDict[int, None] = OrderedDict()
        for call, counted in zip(r.calls, r.counted):
            for e in call:
                if e in cache:
                    hits += counted
                    cache.move_to_end(e)
                else:
                    if len(cache) >= num_slots:
                        cache.popitem(last=False)
                    cache[e] = None
    return hits


def simulate(trace: RouteTrace, policies: Sequence[str], slots: Sequence[int]) -> dict:
    """Hit rates per scenario, slot count and policy, with the Belady optimum."""
    out: dict = {"model": trace.model, "arch": trace.arch, "n_layer": trace.n_layer,
                 "n_expert": trace.n_expert, "top_k": trace.top_k, "scenarios": {}}
    for scen, (phases, count) in SCENARIOS.items():
        layers = replays(trace, phases, count)
        total = sum(r.accesses for r in layers)
        ncalls = sum(len(r.calls) for r in layers)
        rows = {}
        for s in slots:
            best = optimal_hits(layers, s)
            row: dict = {"accesses": total, "belady": best / total,
                         "lru_serial": serial_lru_hits(layers, s) / total}
            for name in policies:
                t0 = time.perf_counter()
                hits = policy_hits(layers, name, s, trace.n_expert)
                dt = time.perf_counter() - t0
                row[name] = {
                    "hit_rate": hits / total,
                    "vs_belady": hits / best if best else 1.0,
                    "us_per_call": 1e6 * dt / max(1, ncalls),
                }
            rows[str(s)] = row
        out["scenarios"][scen] = rows
    return out


def readme_check(name: str, result: dict) -> dict | None:
    """Our one-expert-at-a-time LRU against the trace README's figures (2 decimals)."""
    want = README_LRU.get(name)
    rows = result["scenarios"].get("gen", {})
    if want is None or not all(str(s) in rows for s in SLOTS):
        return None
    got = [rows[str(s)]["lru_serial"] for s in SLOTS]
    return {"readme": list(want), "ours": got,
            "match": all(abs(g - w) <= 0.005 + 1e-9 for g, w in zip(got, want))}


def format_table(name: str, result: dict, policies: Sequence[str]) -> str:
    lines = []
    for scen, rows in result["scenarios"].items():
        lines.append(f"\n{name} [{scen}]  hit rate (hit rate / Belady); "
                     "lru1x1 = LRU fed one expert at a time (the README's figures)")
        header = f"{'slots':>5} {'belady':>7} {'lru1x1':>7} " + " ".join(
            f"{p:>15}" for p in policies
        )
        lines.append(header)
        for s, row in rows.items():
            cells = " ".join(
                f"{row[p]['hit_rate']:6.3f} ({row[p]['vs_belady']:5.3f})" for p in policies
            )
            lines.append(f"{s:>5} {row['belady']:7.3f} {row['lru_serial']:7.3f} {cells}")
    return "\n".join(lines)


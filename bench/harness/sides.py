"""Run several configurations ("sides") of one decode measurement, interleaved token by token.

Why: every target is a ratio between sides measured in the same run. Interleaving (one
token of each side in turn, order flipped every round) makes background load on this
shared machine hit all sides alike. Where the sides do not fit in memory together
(full scale), they run one after the other instead, and the report says so. A side whose
worker dies (OOM kill) is recorded as such and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.driver import Worker, WorkerDied, merge


@dataclass
class Side:
    name: str
    load: dict  # arguments of the worker's "load" request
    cap: int | None = None  # memory cgroup limit of the worker process
    result: dict = field(default_factory=dict)


Between = Callable[[Side, dict], None]


def _call(side: Side, worker: Worker, op: str, **args) -> dict | None:
    if "died" in side.result:
        return None
    try:
        return worker.call(op, **args)
    except WorkerDied as e:
        side.result["died"] = {"op": op, **e.info}
        return None


def _rounds(sides: list[Side], workers: list[Worker], n: int, keep: bool,
            between: Between | None) -> None:  # fmt: skip
    order = list(range(len(sides)))
    for r in range(n):
        for i in order if r % 2 == 0 else order[::-1]:
            reply = _call(sides[i], workers[i], "decode", n=1)
            if reply is not None and keep:
                sides[i].result.setdefault("replies", []).append(reply)
                if between is not None:
                    between(sides[i], reply)


def run_sides(sides: list[Side], *, prompt: list[int], warmup: int, tokens: int, logs: Path,
              interleave: bool = True, between: Between | None = None,
              before: Callable[[], None] | None = None) -> list[Side]:  # fmt: skip
    """Load, prefill `prompt`, decode `warmup` then `tokens` tokens per side; results on sides.

    side.result: load (reply), prefill (reply), decode (merged measured replies), exit
    (exit code, cgroup peak / OOM), died (if the worker was killed). `before` runs once
    before each group of sides starts (e.g. drop the page cache).
    """
    groups = [sides] if interleave else [[s] for s in sides]
    for group in groups:
        if before is not None:
            before()
        workers = [Worker(s.name, logs, cap=s.cap) for s in group]
        try:
            for s, w in zip(group, workers):
                reply = _call(s, w, "load", **s.load)
                if reply is not None:
                    s.result["load"] = reply
            for s, w in zip(group, workers):
                reply = _call(s, w, "prefill", tokens=prompt)
                if reply is not None:
                    s.result["prefill"] = reply
            _rounds(group, workers, warmup, False, None)
            _rounds(group, workers, tokens, True, between)
        finally:
            for s, w in zip(group, workers):
                s.result["exit"] = w.close()
        for s in group:
            if s.result.get("replies"):
                s.result["decode"] = merge(s.result.pop("replies"))
    return sides

"""`python -m bench.harness.worker`: one model in its own process, driven one JSON line at a time.

Why: on a noisy 2-core machine a ratio means something only when the two things compared
run in alternation, token by token, so that the noise hits both alike. Each side needs its
own process: a memory cap (cgroup) applies per process, /proc/self/io counts one process's
disk reads, and a resident model must not share an allocator with a streamed one. The
driver (bench/harness/driver.py) sends `{"op": ...}` lines on stdin and reads one JSON reply line
per request; anything libraries print goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO


def read_bytes_so_far() -> int:
    """Bytes this process made the kernel fetch from storage (/proc/self/io read_bytes)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes line")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shard_paths(store: str) -> list[str]:
    from mlxstore.formats import StoreReader

    reader = StoreReader(store)
    try:
        return [str(reader.path_of(i)) for i in range(len(reader.index.shards))]
    finally:
        reader.close()


@dataclass
class Session:
    """The loaded model and what the requests share: KV cache, last token, read log."""

    model: Any = None
    engine: str = ""
    store: str = ""
    cache: Any = None  # the KV cache decode continues from
    caches: dict = field(default_factory=dict)  # named prefill caches
    last: int = 0
    wrappers: list = field(default_factory=list)
    batches: list = field(default_factory=list)  # missed extents, one list per bank call
    record: bool = False


def _banks(model) -> list:
    from mlxstore.moe.streaming import StreamingExperts

    return [m.bank for _, m in model.named_modules() if isinstance(m, StreamingExperts)]


def _record_misses(session: Session) -> None:
    """Log each bank call's missed extents by wrapping the policy's `lookup` (per instance)."""
    paths = shard_paths(session.store)
    for bank in _banks(session.model):
        lookup, extents = bank.policy.lookup, bank.group.extents

        def logged(experts, _lookup=lookup, _extents=extents):
            slots, misses = _lookup(experts)
            if misses and session.record:
                session.batches.append([(paths[_extents[e].shard], _extents[e].offset,
                                         _extents[e].length) for e, _ in misses])  # fmt: skip
            return slots, misses

        bank.policy.lookup = logged


def preload(model) -> int:
    """Read every expert into its bank (a budget that fits all): the bytes read."""
    total = 0
    for bank in _banks(model):
        experts = list(range(bank.num_experts))
        for start in range(0, len(experts), bank.num_slots):
            bank.ensure(experts[start : start + bank.num_slots])
        total += bank.stats.bytes_read
    return total


def op_load(s: Session, engine: str, path: str, slots: int | None = None,
            budget: int | None = None, cap: int | None = None, slack: int = 160 << 20,
            prefetch: str | None = None, page_cache: str | None = None, io_threads: int | None = None,
            max_context: int = 1024, trace: str | None = None, phases: str = "gen",
            seed: int = 0, preload_all: bool = False, record: bool = False) -> dict:  # fmt: skip
    """Load `path` with mlx-lm (resident) or mlxstore (streamed), then replay `trace`."""
    import mlx.core as mx
    import mlx_lm

    from mlxstore import moe
    from mlxstore.formats.route_trace import GENERATION, PROMPT, load_route_trace
    from mlxstore.moe.replay import replay

    rss0, t0, io0 = rss_bytes(), time.perf_counter(), read_bytes_so_far()
    out: dict = {"rss_before": rss0}
    if engine == "mlx-lm":
        model, tokenizer = mlx_lm.load(path)
        mx.eval(model.parameters())
    elif engine == "mlxstore":
        if cap is not None:  # the cap holds this interpreter too; the plan gets the rest
            budget = cap - rss0 - slack
            out["budget_from_cap"] = budget
        kw = {k: v for k, v in (("prefetch", prefetch), ("page_cache", page_cache),
                                ("io_threads", io_threads)) if v is not None}  # fmt: skip
        model, tokenizer = moe.load(path, budget, slots_per_layer=slots, max_context=max_context, **kw)
        plan = moe.plan_of(model)
        out["plan"] = None if plan is None else {**plan.__dict__, "total_bytes": plan.total_bytes,
                                                 "bank_bytes": plan.bank_bytes}  # fmt: skip
        s.store = path
        if preload_all:
            t1 = time.perf_counter()
            out["preload_bytes"] = preload(model)
            out["preload_seconds"] = time.perf_counter() - t1
        moe.reset_stats(model)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    s.model, s.engine, s.record = model, engine, record
    if record:
        _record_misses(s)
    if trace:
        which = {"gen": (GENERATION,), "all": (PROMPT, GENERATION)}[phases]
        s.wrappers = replay(model, load_route_trace(trace), phases=which, seed=seed)
    out.update(load_seconds=time.perf_counter() - t0, rss_after=rss_bytes(),
               load_read_bytes=read_bytes_so_far() - io0,
               mlx_active=mx.get_active_memory(), mlx_peak=mx.get_peak_memory())  # fmt: skip
    return out


def _measure(s: Session, fn) -> dict:
    """Run `fn`, returning its result with the stats, disk reads and syncs it caused."""
    import mlx.core as mx

    from mlxstore import moe
    from mlxstore.moe.plain import set_plain

    if s.engine == "mlxstore":
        moe.reset_stats(s.model)
    for w in s.wrappers:
        set_plain(w, "sync_seconds", 0.0)
    s.batches.clear()
    io0 = read_bytes_so_far()
    out = fn()
    out["io_read_bytes"] = read_bytes_so_far() - io0
    out["sync_seconds"] = sum(w.sync_seconds for w in s.wrappers)
    if s.engine == "mlxstore":
        out["stats"] = moe.stats(s.model).total.as_dict()
    if s.record:
        out["batches"] = list(s.batches)
    out["mlx_peak"] = mx.get_peak_memory()
    out["rss"] = rss_bytes()
    return out


def op_prefill(s: Session, tokens: list[int], chunk: int = 512, fresh: bool = True,
               cache: str = "main") -> dict:  # fmt: skip
    """Process a prompt in chunks of `chunk` tokens, in a fresh or the named KV cache.

    Decode continues from the cache of the latest prefill.
    """
    import mlx.core as mx

    from mlxstore.mlxlm import make_prompt_cache

    if fresh or cache not in s.caches:
        s.caches[cache] = make_prompt_cache(s.model)
    s.cache = s.caches[cache]

    def run() -> dict:
        t0 = time.perf_counter()
        for start in range(0, len(tokens), chunk):
            logits = s.model(mx.array([tokens[start : start + chunk]], dtype=mx.int32), cache=s.cache)
            y = mx.argmax(logits[0, -1])
            mx.eval(y, [c.state for c in s.cache])
        s.last = int(y.item())
        return {"seconds": time.perf_counter() - t0, "tokens": len(tokens)}

    return _measure(s, run)


def op_decode(s: Session, n: int = 1) -> dict:
    """Greedy decode of `n` tokens, one synchronous step each (per-token wall times)."""
    import mlx.core as mx

    from mlxstore.mlxlm import make_prompt_cache

    if s.cache is None:
        s.cache = make_prompt_cache(s.model)

    def run() -> dict:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            logits = s.model(mx.array([[s.last]], dtype=mx.int32), cache=s.cache)
            y = mx.argmax(logits[0, -1])
            mx.eval(y)
            s.last = int(y.item())
            times.append(time.perf_counter() - t0)
        return {"seconds": times}

    return _measure(s, run)


def op_ping(s: Session) -> dict:
    return {"pid": os.getpid(), "rss": rss_bytes()}


OPS = {"load": op_load, "prefill": op_prefill, "decode": op_decode, "ping": op_ping}


def serve(inp: TextIO, out: TextIO) -> None:
    """Answer requests until EOF or {"op": "quit"}; errors become {"error": ...} replies."""
    s = Session()
    for line in inp:
        req = json.loads(line)
        op = req.pop("op")
        if op == "quit":
            break
        try:
            reply = OPS[op](s, **req)
        except Exception as e:  # reported to the driver, which decides
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> None:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints must not corrupt the reply stream
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()

"""`python -m bench gpu`: streaming on a fast accelerator, every figure from one process.

Why one process: on the lent GPU machine the same configuration varied up to 1.9x from
process to process, so every configuration here shares one process and one model, and
the timed segments alternate between them round by round. The stage builds what it
needs on the machine's own disk (a random-weight Qwen3-30B-A3B-shaped model and its
store), replays a real routing trace through every model (resident and streamed alike,
so they compute the same tokens), and checks each streamed configuration's logits
against the resident model's, bit for bit, before timing anything.

Targets (issue 8): G1 every expert fits >= 0.98x resident; G2 100% hits >= 0.70x resident,
on the default path (optimistic steps, moe.optimistic) and, G2-host, through the host-sync
path, whose per-layer host work must stay <= 60 us (G2h); G3 50%/25% of experts, cold and
warm, >= 0.85x the bound 1 / (resident s/token + missed bytes/token / raw GB/s); G4
expert bytes/s while reading >= 0.9x raw parallel pread of the same extents; G5 a
512-token prompt at 25% >= 0.85x min(resident, reading each distinct expert once).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import click
import mlx.core as mx
import numpy as np

from bench.harness.genmodel import make_config, write_model
from bench.harness.policy_sim import default_trace
from bench.harness.rawdisk import _run_workers as run_workers
from bench.harness.rawdisk import drop_file_cache
from bench.harness.worker import _banks

TARGETS = {  # id: (bound, what is measured)
    "G1": (0.98, "decode tok/s, every expert fits / resident mlx-lm"),
    "G2": (0.70, "decode tok/s, 100% hits, default path (optimistic steps) / resident"),
    "G2-host": (0.70, "decode tok/s, 100% hits through the host-sync path / resident"),
    "G2h": (60.0, "per-layer host work of the streamed layer, sync and reads excluded, us (<=)"),
    "G3": (0.85, "decode tok/s at 50%/25% of experts / 1 / (resident s/token + missed bytes / raw GB/s)"),
    "G4": (0.9, "expert bytes/s while reading / raw parallel pread of the same extents"),
    "G5": (0.85, "prompt tok/s at 25% / min(resident, reading each distinct expert once)"),
}


def verdict(target_id: str, value: float | None, note: str = "") -> dict:
    bound, what = TARGETS[target_id]
    low = target_id == "G2h"
    met = None if value is None else (value <= bound if low else value >= bound)
    return {"id": target_id, "value": value, "target": f"{'<=' if low else '>='} {bound}", "met": met,
            "metric": what, "note": note}  # fmt: skip


def _tokens(name: str, tokens: int) -> int:
    """Decode tokens of one timed segment: configurations that read nothing run 4x as many,
    so their short per-token times are not noise."""
    return 4 * tokens if name in ("resident", "all-fit") or name.startswith("all-hits") else tokens


def _files(store: Path) -> list[str]:
    from bench.harness.worker import shard_paths

    return shard_paths(str(store))


def _drop(paths) -> None:
    for p in paths:
        drop_file_cache(p)


def _warm(paths) -> None:
    buf = bytearray(16 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _record(model, log: list) -> None:
    """Every miss's extent goes to `log` as (path, offset, length) (wraps each bank's fill)."""
    for bank in _banks(model):
        paths = [os.readlink(f"/proc/self/fd/{fd}") for fd in bank.fds]

        def fill(misses, _fill=bank.fill, _bank=bank, _paths=paths):
            if log is not None and misses:
                log.extend((_paths[_bank.group.extents[e].shard], _bank.group.extents[e].offset,
                            _bank.group.extents[e].length) for e, _ in misses)  # fmt: skip
            return _fill(misses)

        bank.fill = fill


def raw_read(extents: list, threads: int, cold: bool) -> dict:
    """Parallel pread of `extents` (each cold: its pages dropped after the read, as the
    streamed side's page_cache="drop" does), into buffers allocated before timing."""
    from mlxstore import osio

    if not extents:
        return {"bytes": 0, "seconds": 0.0, "gb_per_s": 0.0}
    if cold:
        _drop({p for p, _, _ in extents})
    fds = {p: os.open(p, os.O_RDONLY) for p in {p for p, _, _ in extents}}
    biggest = max(n for _, _, n in extents)
    nxt = iter(range(len(extents)))
    lock = threading.Lock()

    def work(_: int) -> None:
        view = memoryview(bytearray(biggest))
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            p, off, n = extents[i]
            osio.read_extent_into(fds[p], off, [view[:n]])
            if cold:
                osio.advise_dontneed(fds[p], off, n)

    try:
        seconds = run_workers(work, threads)
    finally:
        for fd in fds.values():
            os.close(fd)
    total = sum(n for _, _, n in extents)
    return {"bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9}


def _stats(model) -> dict:
    from mlxstore import moe
    from mlxstore.moe import replay

    t = moe.stats(model).total
    return {"calls": t.calls, "requests": t.requests, "hits": t.hits, "misses": t.misses,
            "bytes_read": t.bytes_read, "read_seconds": t.read_seconds, "file_seconds": t.file_seconds,
            "wait_seconds": t.wait_seconds, "sync_seconds": t.sync_seconds, "host_seconds": t.host_seconds,
            "graph_seconds": t.graph_seconds, "passes": t.passes, "optimistic": t.optimistic, "redone": t.redone,
            "ahead_used": t.ahead_used, "ahead_paused": t.ahead_paused, "prefetch_bytes": t.prefetch_bytes,
            # the replay wrapper makes the layer's real host sync, on the router's own ids
            "router_sync_seconds": sum(w.sync_seconds for w in replay.replayed(model))}  # fmt: skip


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def _logits_run(model, prompt: np.ndarray, steps: list[int]) -> list[np.ndarray]:
    """Prompt logits, then one step per token of `steps` (teacher-forced), as float32."""
    from mlxstore.mlxlm import make_prompt_cache
    from mlxstore.moe import replay

    replay.rewind(model)
    cache = make_prompt_cache(model)
    out = [np.array(model(mx.array(prompt)[None], cache=cache)[:, -1].astype(mx.float32))]
    for tok in steps:
        out.append(np.array(model(mx.array([[tok]]), cache=cache)[:, -1].astype(mx.float32)))
    return out


def _decode(model, prompt: np.ndarray, n: int, step: int) -> tuple[float, dict]:
    """Seconds of `n` greedy tokens through mlx-lm's generate_step after `prompt`, replay at `step`."""
    from mlx_lm.generate import generate_step

    from mlxstore.moe import replay

    replay.rewind(model, step)
    gen = generate_step(mx.array(prompt), model, max_tokens=n + 1)
    next(gen)  # the prompt and the first token are not decode
    before, t0 = _stats(model) if _banks(model) else None, time.perf_counter()
    for _ in gen:
        pass
    seconds = time.perf_counter() - t0
    return seconds, (_delta(before, _stats(model)) if before is not None else {})


def _prefill(model, prompt: np.ndarray) -> tuple[float, dict]:
    from mlxstore.mlxlm import make_prompt_cache
    from mlxstore.moe import replay

    replay.rewind(model)
    cache = make_prompt_cache(model)
    before, t0 = _stats(model) if _banks(model) else None, time.perf_counter()
    mx.eval(model(mx.array(prompt)[None], cache=cache))
    seconds = time.perf_counter() - t0
    return seconds, (_delta(before, _stats(model)) if before is not None else {})


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "mlx": mx.__version__,
            "device": str(mx.default_device())}  # fmt: skip
    try:
        info.update({k: v for k, v in mx.device_info().items() if isinstance(v, (str, int, float))})
    except (AttributeError, RuntimeError):
        pass
    return info


@click.command("gpu")
@click.option("--dir", "work", default=None, help="Work folder on the disk to measure (default: a temp dir).")
@click.option("--layers", default=48, show_default=True, help="MoE layers of the generated model.")
@click.option("--experts", default=128, show_default=True)
@click.option("--hidden", default=2048, show_default=True)
@click.option("--moe-intermediate", default=768, show_default=True)
@click.option("--vocab", default=151936, show_default=True)
@click.option("--tokens", default=24, show_default=True, help="Decode tokens per timed segment.")
@click.option("--rounds", default=2, show_default=True, help="Timed rounds (configurations alternate).")
@click.option("--prompt", "prompt_len", default=512, show_default=True, help="Prompt tokens of G5.")
@click.option("--trace", default=None, help="Routing trace (default: qwen3-30b-a3b.route.csv).")
@click.option("--sha", default=None, help="Git sha to record when the tree has no .git.")
@click.option("--out", default=None, help="Folder for gpu.json and gpu.md (default: a new bench/results/gpu-<time>).")
@click.option("--configs", default=None, help="Comma-separated subset of the configurations to run.")
@click.option("--from-partial", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Write the decode report of a run cut short from its gpu-partial.json, and run nothing.")
def command(work, layers, experts, hidden, moe_intermediate, vocab, tokens, rounds, prompt_len, trace,
            sha, out, configs, from_partial) -> None:  # fmt: skip
    """Issue 8's GPU targets G1-G5 in one process (run it on the GPU machine)."""
    if from_partial:
        return report_from_partial(Path(from_partial), Path(out or Path(from_partial).parent), sha)
    import mlx_lm

    from bench.harness.results import new_result
    from mlxstore import moe
    from mlxstore.formats.route_trace import load_route_trace
    from mlxstore.moe import replay
    from mlxstore.pack import pack

    out = out or str(new_result("gpu", suffix=""))
    t_start = time.perf_counter()
    work = Path(work or tempfile.mkdtemp(prefix="mlxstore-gpu-"))
    trace_path = Path(trace) if trace else default_trace()
    route = load_route_trace(trace_path)
    config = make_config(layers=layers, experts=experts, hidden=hidden, moe_intermediate=moe_intermediate,
                         vocab=vocab, intermediate=3 * hidden)  # fmt: skip
    t0 = time.perf_counter()
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        write_model(model_dir, config)
    store = work / "model.store"
    if not store.exists():
        pack(model_dir, store, progress=False)
    build_s = time.perf_counter() - t0
    meta = {"command": "python -m bench gpu " + " ".join(f"--{k} {v}" for k, v in (
                ("layers", layers), ("tokens", tokens), ("rounds", rounds), ("prompt", prompt_len))),
            "git": sha or _git_sha(), "machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "model": config, "trace": trace_path.name, "build_seconds": build_s}  # fmt: skip
    files = _files(store)
    print(f"model + store built in {build_s:.0f}s at {work}", flush=True)

    resident, _ = mlx_lm.load(str(model_dir))
    replay.replay(resident, route, sync=False)
    models = {"resident": resident}
    specs = {  # name: (slots, preload, host path forced, load options); the rest are the backend's defaults
        "all-fit": (experts, True, False, {}),
        "all-hits-optimistic": (experts, True, True, {}),
        "all-hits-optimistic-no-overlap": (experts, True, True, {"overlap": False}),
        "all-hits-optimistic-every1": (experts, True, True, {"launch_every": 1}),
        "all-hits-optimistic-every2": (experts, True, True, {"launch_every": 2}),
        "all-hits-optimistic-every8": (experts, True, True, {"launch_every": 8}),
        "all-hits-host": (experts, True, True, {"optimistic": False}),
        "75%-staged": (experts * 3 // 4, False, False, {"fill": "staged"}),
        "50%-staged": (experts // 2, False, False, {"fill": "staged"}),
        "50%-staged-scatter": (experts // 2, False, False, {"fill": "staged", "staged_copy": "scatter"}),
        "50%-direct": (experts // 2, False, False, {"fill": "direct"}),
        "25%-staged": (experts // 4, False, False, {"fill": "staged"}),
        "25%-staged-scatter": (experts // 4, False, False, {"fill": "staged", "staged_copy": "scatter"}),
        "25%-staged-hitsfirst": (experts // 4, False, False, {"fill": "staged", "hits_first": True}),
        "25%-staged-scatter-hitsfirst": (experts // 4, False, False,
                                         {"fill": "staged", "staged_copy": "scatter", "hits_first": True}),
        "25%-direct-hitsfirst": (experts // 4, False, False, {"fill": "direct", "hits_first": True}),
        # read-ahead of the next layer's experts: the replayed model's own router (it cannot
        # predict the trace: what wrong predictions cost) and foresight (every one right)
        "50%-staged-ahead-foresight": (experts // 2, False, False,
                                       {"fill": "staged", "prefetch": "next-layer-read", "foresight": True}),
        "25%-staged-ahead": (experts // 4, False, False, {"fill": "staged", "prefetch": "next-layer-read"}),
        "25%-staged-ahead-foresight": (experts // 4, False, False,
                                       {"fill": "staged", "prefetch": "next-layer-read", "foresight": True}),
        "25%-direct-ahead-foresight": (experts // 4, False, False,
                                       {"fill": "direct", "prefetch": "next-layer-read", "foresight": True}),
        "25%-staged-perexpert": (experts // 4, False, False, {"fill": "staged", "staged_load_size": 1}),
        "25%-staged-32MiB": (experts // 4, False, False, {"fill": "staged", "staged_load_size": "32MiB"}),
        "25%-staged-reads256KiB": (experts // 4, False, False, {"fill": "staged", "read_size": "256KiB"}),
        "25%-staged-reads512KiB": (experts // 4, False, False, {"fill": "staged", "read_size": "512KiB"}),
        "25%-staged-reads4MiB": (experts // 4, False, False, {"fill": "staged", "read_size": "4MiB"}),
        "25%-direct": (experts // 4, False, False, {"fill": "direct"}),
        "25%-host": (experts // 4, False, False, {"fill": "staged", "optimistic": False}),
    }
    if configs:
        wanted = configs.split(",")
        specs = {k: v for k, v in specs.items() if k in wanted}
    from bench.harness.worker import preload

    for name, (slots, pre, host, kw) in specs.items():
        kw = dict(kw)
        launch_every = kw.pop("launch_every", None)
        foresight = kw.pop("foresight", False)
        m, _ = moe.load(store, slots_per_layer=slots, page_cache="drop", **kw)
        if launch_every is not None:
            m.mlxstore_optimism.launch_every = launch_every
        if pre:
            preload(m)
        if host:
            for b in _banks(m):
                b.fixed_slots = None  # keep the host-sync path although every expert is resident
        replay.replay(m, route, foresight=foresight)
        models[name] = m
    print(f"loaded {len(models)} models ({time.perf_counter() - t_start:.0f}s)", flush=True)

    rng = np.random.default_rng(0)
    short = rng.integers(3, vocab, size=32).astype(np.int32)
    # Exactness: the same teacher-forced tokens through every model, logits compared bitwise.
    steps = [int(t) for t in rng.integers(3, vocab, size=12)]
    long_prompt = rng.integers(3, vocab, size=prompt_len).astype(np.int32)
    want = _logits_run(resident, short, steps)
    want_long = _logits_run(resident, long_prompt[:256], [])
    exact = {}
    for name, m in models.items():
        if name == "resident":
            continue
        got = _logits_run(m, short, steps) + _logits_run(m, long_prompt[:256], [])
        exact[name] = all(np.array_equal(w, g) for w, g in zip(want + want_long, got))
        print(f"exact {name}: {exact[name]}", flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpu-partial.json").write_text(json.dumps({**meta, "exact": exact}, default=float) + "\n")

    # Decode, alternated: cold (every miss from the disk) then warm (the page cache holds the store).
    timed: dict[str, list] = {}
    extents: dict[str, list] = {}
    raws: dict[str, dict] = {}  # the raw reference of each config and phase, read in that phase
    order = list(models)
    for phase in ("cold", "warm"):
        if phase == "warm":
            _warm(files)
        for r in range(rounds):
            names = order if r % 2 == 0 else order[::-1]
            for name in names:
                m = models[name]
                log: list = []
                for b in _banks(m):
                    b.options = replace(b.options, page_cache="drop" if phase == "cold" else "keep")
                _record(m, log)
                if phase == "cold":
                    _drop(files)
                seconds, st = _decode(m, short, _tokens(name, tokens), step=64 * r)
                for b in _banks(m):
                    del b.fill  # back to the class's method
                timed.setdefault(f"{name}/{phase}", []).append({"seconds": seconds, "tokens": _tokens(name, tokens), **st})
                extents.setdefault(f"{name}/{phase}", []).extend(log)
        if phase == "warm":
            _warm(files)  # the cold raw reads below must not leave the warm ones cold
        for key in [k for k in extents if k.endswith("/" + phase) and extents[k]]:
            raws[key] = raw_read(extents[key], threads=16, cold=phase == "cold")
        print(f"{phase} decode done ({time.perf_counter() - t_start:.0f}s)", flush=True)
        partial = {**meta, "exact": exact, "timed": timed, "raws": raws}
        (Path(out) / "gpu-partial.json").write_text(json.dumps(partial, default=float) + "\n")

    rows = decode_rows(timed, exact, raws)
    # the decode table stands on its own: written now, so a run cut short in the prompt keeps it
    write_report(Path(out), {**meta, "exact": exact, "decode": rows, "prompt": {}, "prompt_runs": [],
                             "targets": targets_of(rows, {}, prompt_len), "seconds": time.perf_counter() - t_start})

    # Prompt: 512 tokens at 25% of the experts, expert-major passes, cold, vs resident.
    prompt_rows = []
    read_once_s = None
    for r in range(rounds):
        for name in [n for n in models if n == "resident" or n.startswith("25%-staged")]:
            m = models[name]
            log = []
            if name != "resident":
                _record(m, log)
                _drop(files)
            seconds, st = _prefill(m, long_prompt)
            if name != "resident":
                for b in _banks(m):
                    del b.fill
            prompt_rows.append({"config": name, "round": r, "seconds": seconds, **st, "extents": len(log)})
            if name.startswith("25%-staged") and r == 0 and read_once_s is None:
                distinct = sorted(set(log))
                raw = raw_read(distinct, threads=16, cold=True)
                read_once_s = raw["seconds"]
    res_p = np.median([x["seconds"] for x in prompt_rows if x["config"] == "resident"])
    prompt = {}
    for name in [n for n in models if n.startswith("25%-staged")]:
        s = float(np.median([x["seconds"] for x in prompt_rows if x["config"] == name]))
        bound_s = max(res_p, read_once_s)
        prompt[name] = {"tok_s": prompt_len / s, "resident_tok_s": prompt_len / res_p,
                        "read_once_tok_s": prompt_len / read_once_s, "vs_bound": bound_s / s}  # fmt: skip

    write_report(Path(out), {**meta, "exact": exact, "decode": rows, "prompt": prompt, "prompt_runs": prompt_rows,
                             "targets": targets_of(rows, prompt, prompt_len), "seconds": time.perf_counter() - t_start})


def report_from_partial(partial: Path, out: Path, sha: str | None) -> None:
    """The decode report of a run that ended before its prompt phase (the GPU machine's
    time limit), from the partial file it leaves after each decode phase. A partial
    written before the run recorded its machine and model says "not recorded"."""
    data = json.loads(partial.read_text())
    if "timed" not in data or not any(k.startswith("resident/") for k in data["timed"]):
        raise click.ClickException(f"{partial}: no timed decode segments (the run ended before its first phase)")
    unknown = "not recorded"
    meta = {"command": data.get("command", unknown), "git": data.get("git") or sha or unknown,
            "machine": data.get("machine", {"device": unknown, "mlx": unknown, "cpus": unknown}),
            "date": data.get("date", unknown), "model": data.get("model"), "trace": data.get("trace", unknown)}
    rows = decode_rows(data["timed"], data["exact"], data.get("raws", {}))
    write_report(out, {**meta, "exact": data["exact"], "decode": rows, "prompt": {}, "prompt_runs": [],
                       "targets": targets_of(rows, {}, 0), "seconds": None, "from_partial": partial.name})


def targets_of(rows: list[dict], prompt: dict, prompt_len: int) -> list[dict]:
    """Issue 8's verdicts from the decode rows and the prompt results (None where not run)."""

    def row(name, phase):
        return next((x for x in rows if x["config"] == name and x["phase"] == phase), {})

    def worst(key, names):
        values = [row(n, ph)[key] for n in names for ph in ("cold", "warm") if key in row(n, ph)]
        return min(values) if values else None

    host = row("all-hits-host", "warm")
    return [
        verdict("G1", worst("vs_resident", ["all-fit"]), "worst of cold/warm"),
        verdict("G2", worst("vs_resident", ["all-hits-optimistic"]), "worst of cold/warm"),
        verdict("G2-host", worst("vs_resident", ["all-hits-host"]), "worst of cold/warm"),
        verdict("G2h", host.get("host_us_per_layer"), "mean over calls, 100% hits, warm"),
        verdict("G3", worst("vs_bound", ["50%-staged", "25%-staged"]), "worst of 50%/25% x cold/warm (staged fill)"),
        verdict("G4", worst("read_vs_raw", ["50%-staged", "25%-staged"]), "worst of 50%/25% x cold/warm"),
        verdict("G5", prompt.get("25%-staged", {}).get("vs_bound"),
                f"{prompt_len}-token prompt at 25%" if prompt else "prompt not run"),
    ]


def write_report(out: Path, report: dict) -> None:
    """gpu.json and gpu.md in `out` (the markdown printed too)."""
    md = _markdown(report)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / "gpu.md").write_text(md)


def decode_rows(timed: dict, exact: dict, raws: dict) -> list[dict]:
    """One row per configuration and phase from the timed segments (and each one's raw
    reference read, where it was taken: the bound and the read ratios need it)."""
    rows = []
    res_s = {ph: np.median([x["seconds"] / x["tokens"] for x in timed[f"resident/{ph}"]]) for ph in ("cold", "warm")}
    for key, runs in timed.items():
        name, phase = key.split("/")
        s_tok = float(np.median([x["seconds"] / x["tokens"] for x in runs]))
        row = {"config": name, "phase": phase, "tok_s": 1 / s_tok, "vs_resident": res_s[phase] / s_tok,
               "exact": exact.get(name, True)}  # fmt: skip
        if name != "resident":
            tot = {k: sum(x[k] for x in runs) for k in runs[0] if k not in ("seconds", "tokens")}
            n_tok = sum(x["tokens"] for x in runs)
            row.update(hit_rate=tot["hits"] / max(1, tot["requests"]),
                       missed_mb_per_token=tot["bytes_read"] / n_tok / 1e6,
                       sync_us_per_layer=(tot["sync_seconds"] + tot["router_sync_seconds"]) / max(1, tot["calls"]) * 1e6,
                       host_us_per_layer=tot["host_seconds"] / max(1, tot["calls"]) * 1e6,
                       graph_us_per_layer=tot["graph_seconds"] / max(1, tot["calls"]) * 1e6,
                       wait_ms_per_token=tot["wait_seconds"] / n_tok * 1e3,
                       copy_ms_per_token=(tot["read_seconds"] - tot["file_seconds"]) / n_tok * 1e3,
                       file_gb_s=tot["bytes_read"] / tot["file_seconds"] / 1e9 if tot["file_seconds"] else None,
                       read_gb_s=tot["bytes_read"] / tot["read_seconds"] / 1e9 if tot["read_seconds"] else None,
                       optimistic_share=tot["optimistic"] / max(1, tot["calls"]),
                       ahead_share=tot["ahead_used"] / max(1, tot["misses"]),
                       ahead_paused_share=tot.get("ahead_paused", 0) / max(1, tot["calls"]),
                       ahead_mb_per_token=tot["prefetch_bytes"] / n_tok / 1e6,
                       redone_per_token=tot["redone"] / n_tok)  # fmt: skip
            raw = raws.get(key)
            if raw:
                row["raw_gb_s"] = raw["gb_per_s"]
                bound = 1 / (res_s[phase] + tot["bytes_read"] / n_tok / (raw["gb_per_s"] * 1e9))
                row["bound_tok_s"] = bound
                row["vs_bound"] = row["tok_s"] / bound
                row["read_vs_raw"] = (row["read_gb_s"] or 0) / raw["gb_per_s"]
                row["file_vs_raw"] = (row["file_gb_s"] or 0) / raw["gb_per_s"]
            per_tok = {k: tot[k] / n_tok * 1e3 for k in ("sync_seconds", "router_sync_seconds", "host_seconds",
                                                         "graph_seconds", "file_seconds", "read_seconds")}  # fmt: skip
            row["profile_ms"] = {"total": s_tok * 1e3, "sync": per_tok["sync_seconds"] + per_tok["router_sync_seconds"],
                                 "host": per_tok["host_seconds"], "graph": per_tok["graph_seconds"],
                                 "file": per_tok["file_seconds"], "copy": per_tok["read_seconds"] - per_tok["file_seconds"]}  # fmt: skip
            row["profile_ms"]["rest"] = row["profile_ms"]["total"] - sum(v for k, v in row["profile_ms"].items() if k != "total")
        rows.append(row)

    return rows


def _model_line(model: dict | None) -> str:
    if not model:
        return "model not recorded"
    return f"model {model['num_hidden_layers']} layers x {model['num_experts']} experts top-{model['num_experts_per_tok']}"


def _markdown(rep: dict) -> str:
    cols = ["config", "phase", "tok_s", "vs_resident", "hit_rate", "missed_mb_per_token", "sync_us_per_layer",
            "host_us_per_layer", "graph_us_per_layer", "wait_ms_per_token", "copy_ms_per_token", "read_gb_s",
            "file_gb_s", "raw_gb_s", "vs_bound", "optimistic_share", "redone_per_token", "ahead_share",
            "ahead_mb_per_token", "ahead_paused_share", "exact"]  # fmt: skip

    def cell(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = [f"# mlxstore on a GPU (`{rep['command']}`)", "",
             f"git {rep['git']}, {rep['date']}, {rep['machine'].get('device_name', rep['machine']['device'])}, "
             f"mlx {rep['machine']['mlx']}, {rep['machine']['cpus']} CPUs; {_model_line(rep['model'])}, "
             f"trace {rep['trace']}.", *([f"Rebuilt from {rep['from_partial']} (the run ended before its prompt phase)."]
                                         if rep.get("from_partial") else []), "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    for r in rep["decode"]:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    parts = ["total", "sync", "host", "graph", "file", "copy", "rest"]
    lines += ["", "Where a token's time goes, ms per token (sync: waiting for the router's ids; host: the layer's own "
              "work; graph: building and launching; file: waiting for miss reads; copy: queuing the copies into slots "
              "(staged) and waiting for a staging buffer; rest: the model "
              "around the experts, on the GPU and in Python):", "",
              "| config | phase | " + " | ".join(parts) + " |", "|" + "---|" * (len(parts) + 2)]  # fmt: skip
    for r in rep["decode"]:
        if "profile_ms" in r:
            lines.append(f"| {r['config']} | {r['phase']} | " + " | ".join(f"{r['profile_ms'][k]:.1f}" for k in parts) + " |")
    lines += ["", "| prompt config | tok/s | resident tok/s | read-once tok/s | vs bound |", "|---|---|---|---|---|"]
    for name, p in rep["prompt"].items():
        lines.append(f"| {name} | {p['tok_s']:.1f} | {p['resident_tok_s']:.1f} | {p['read_once_tok_s']:.1f} | "
                     f"{p['vs_bound']:.3f} |")  # fmt: skip
    lines += ["", "| target | value | goal | met | what |", "|---|---|---|---|---|"]
    for t in rep["targets"]:
        lines.append(f"| {t['id']} | {cell(t['value'])} | {t['target']} | {t['met']} | {t['metric']}; {t['note']} |")
    return "\n".join(lines) + "\n"

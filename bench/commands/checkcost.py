"""`python -m bench checkcost`: what checksum checking (check=True) costs.

Checksums are off by default on the hot path; this measures the price of turning them on,
page cache warm (the hash pass is the only difference): load_model, reading every tensor
through mlxstore.load, and streamed decode through moe.load with a small bank (the same
forced token sequence both ways, so routing, misses and bytes read are identical). Also
raw xxh3 throughput, the floor for all of it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click

from bench.harness.results import new_result

CONFIG = {"num_hidden_layers": 8, "num_experts": 64, "num_experts_per_tok": 4, "hidden_size": 512,
          "moe_intermediate_size": 512, "vocab_size": 2048}  # fmt: skip


def _median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _paired(call, repeats: int) -> tuple[float, float]:
    """Median seconds of call(False) and call(True), alternated so drift hits both alike."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 * repeats):
        check = bool(i % 2)
        start = time.perf_counter()
        call(check)
        times[check].append(time.perf_counter() - start)
    return statistics.median(times[False]), statistics.median(times[True])


def _xxh3_gbps() -> float:
    import numpy as np

    from mlxstore.formats.layout import xxh3

    data = np.random.default_rng(0).integers(0, 256, 256 << 20, dtype=np.uint8)
    return (256 << 20) / _median_seconds(lambda: xxh3(data), 5) / 1e9


def _decode(store: Path, check: bool, slots: int, tokens: int) -> dict:
    import mlx.core as mx
    import numpy as np

    from mlxstore import moe
    from mlxstore.mlxlm import make_prompt_cache

    model, _ = moe.load(store, slots_per_layer=slots, check=check)
    ids = np.random.default_rng(1).integers(3, CONFIG["vocab_size"], tokens)
    cache = make_prompt_cache(model, max_kv_size=256)
    mx.eval(model(mx.array([ids[:8].tolist()]), cache=cache))
    moe.reset_stats(model)
    start = time.perf_counter()
    for t in ids[8:]:
        mx.eval(model(mx.array([[int(t)]]), cache=cache))
    seconds = time.perf_counter() - start
    st = moe.stats(model).total
    return {"tokens_per_second": (tokens - 8) / seconds, "misses": st.misses, "bytes_read": st.bytes_read,
            "read_seconds": st.read_seconds, "wait_seconds": st.wait_seconds}  # fmt: skip


def run(root: Path, repeats: int, tokens: int, slots: int) -> dict:
    import mlxstore
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir

    src = make_model_dir("qwen3_moe", root / "src", config_overrides=CONFIG, seed=0)
    store = pack(src, root / "store", progress=False)
    size = sum(p.stat().st_size for p in store.iterdir())

    def read_all(check: bool) -> None:
        with mlxstore.load(store, check=check) as lazy:
            dict(lazy)

    out: dict = {"store_bytes": size, "config": CONFIG, "xxh3_gb_per_s": _xxh3_gbps()}
    for name, call in (("load_model", lambda c: mlxstore.load_model(store, check=c)), ("read_all", read_all)):
        call(False)  # warm the page cache
        off, on = _paired(call, repeats)
        out[name] = {"seconds_unchecked": off, "seconds_checked": on, "overhead": on / off - 1}
    _decode(store, False, slots, 16)  # warm
    off, on = _decode(store, False, slots, tokens), _decode(store, True, slots, tokens)
    assert (off["misses"], off["bytes_read"]) == (on["misses"], on["bytes_read"])
    out["decode"] = {"slots_per_layer": slots, "tokens": tokens, "unchecked": off, "checked": on,
                     "overhead": off["tokens_per_second"] / on["tokens_per_second"] - 1,
                     "read_seconds_per_miss_unchecked": off["read_seconds"] / max(off["misses"], 1),
                     "read_seconds_per_miss_checked": on["read_seconds"] / max(on["misses"], 1)}  # fmt: skip
    return out


@click.command("checkcost")
@click.option("--repeats", default=9, show_default=True, help="Timed loads per setting (median).")
@click.option("--tokens", default=300, show_default=True, help="Streamed decode steps per setting.")
@click.option("--slots", default=8, show_default=True, help="Expert slots per layer while streaming.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON results (default: a new bench/results/checkcost-<UTC time>.json; never the committed checkcost.json).")  # fmt: skip
def command(repeats: int, tokens: int, slots: int, out: Path | None) -> None:
    """Time load_model, full reads and streamed decode with and without checksum checks."""
    with tempfile.TemporaryDirectory(prefix="mlxstore-checkcost-") as tmp:
        r = run(Path(tmp), repeats, tokens, slots)
    out = out or new_result("checkcost")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    click.echo(f"store {r['store_bytes'] / 2**20:.0f} MiB; xxh3 {r['xxh3_gb_per_s']:.1f} GB/s")
    for name in ("load_model", "read_all"):
        x = r[name]
        click.echo(f"{name}: {x['seconds_unchecked'] * 1000:.0f} ms -> {x['seconds_checked'] * 1000:.0f} ms "
                   f"with check=True (+{x['overhead']:.1%})")  # fmt: skip
    d = r["decode"]
    click.echo(f"streamed decode ({d['slots_per_layer']} slots, {d['unchecked']['misses']} misses, "
               f"{d['unchecked']['bytes_read'] / 2**20:.0f} MiB read): {d['unchecked']['tokens_per_second']:.1f} -> "
               f"{d['checked']['tokens_per_second']:.1f} tok/s (+{d['overhead']:.1%} time); per miss "
               f"{d['read_seconds_per_miss_unchecked'] * 1e6:.0f} -> {d['read_seconds_per_miss_checked'] * 1e6:.0f} us")  # fmt: skip
    click.echo(f"results in {out}")

"""Issue 2's figures: `mlxstore pack` vs `cp` and `mlxstore.load_model` vs `mlx_lm.load`.

Each pair runs side by side in one invocation on the same bytes, cold page cache before
every step (root: drop_caches), loads in fresh subprocesses so none inherits another's
memory; the ratios are what to quote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from bench.harness.results import new_result

_LOAD = {
    "mlx_lm.load": "import mlx_lm, mlx.core as mx; m, t = mlx_lm.load({p!r}); mx.eval(m.parameters())",
    "mlxstore.load_model": "import mlxstore, mlx.core as mx; m, t = mlxstore.load_model({p!r}); mx.eval(m.parameters())",
}


def drop_caches() -> bool:
    """Empty the page cache so every step reads from disk (needs root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run(cmd: list[str]) -> None:
    """A command and the sync that puts its writes on disk (pack fsyncs; cp must too)."""
    subprocess.run(cmd, check=True, capture_output=True)
    os.sync()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _load_seconds(kind: str, path: Path) -> float:
    code = f"import time; s = time.perf_counter(); {_LOAD[kind].format(p=str(path))}; print(time.perf_counter() - s)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(src: Path, work: Path, repeats: int = 1) -> dict:
    """Pack vs cp and load_model vs mlx_lm.load on `src`, cold cache each step."""
    work.mkdir(parents=True, exist_ok=True)
    copy, store = work / "cp-copy", work / "packed.mlxstore"
    nbytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    rows: dict[str, list[float]] = {"cp": [], "pack": [], "mlx_lm.load": [], "mlxstore.load_model": []}
    pack_cmd = [sys.executable, "-c", "from mlxstore.cli.main import main; main()", "pack", str(src), str(store)]
    cold = True
    for _ in range(repeats):
        for path in (copy, store):
            shutil.rmtree(path, ignore_errors=True)
        cold &= drop_caches()
        rows["cp"].append(_timed(lambda: _run(["cp", "-r", str(src), str(copy)])))
        cold &= drop_caches()
        rows["pack"].append(_timed(lambda: _run(pack_cmd)))
        for kind, path in (("mlx_lm.load", src), ("mlxstore.load_model", store)):
            cold &= drop_caches()
            rows[kind].append(_load_seconds(kind, path))
    best = {k: min(v) for k, v in rows.items()}
    return {
        "source_bytes": nbytes,
        "store_bytes": _du(store),
        "cold_cache": cold,
        "seconds": rows,
        "pack_gbps": nbytes / best["pack"] / 1e9,
        "cp_gbps": nbytes / best["cp"] / 1e9,
        "pack_over_cp": best["cp"] / best["pack"],
        "load_model_over_mlx_lm": best["mlx_lm.load"] / best["mlxstore.load_model"],
    }


@click.command("loadtime")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/work/loadtime"))
@click.option("--repeats", default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="JSON results (default: a new bench/results/loadtime-<UTC time>.json; never the committed loadtime.json).")
def command(src: Path, work: Path, repeats: int, out: str | None) -> None:
    """Pack vs cp, load_model vs mlx_lm.load (speed ratios; > 1 means mlxstore is faster)."""
    r = measure(src, work, repeats)
    gb = r["source_bytes"] / 1e9
    click.echo(f"model {src} ({gb:.2f} GB of safetensors), cold cache: {r['cold_cache']}")
    click.echo(f"{'step':<22}{'seconds':>10}{'GB/s':>8}")
    for k, v in r["seconds"].items():
        click.echo(f"{k:<22}{min(v):>10.2f}{gb / min(v):>8.2f}")
    click.echo(f"pack GB/s / cp GB/s = {r['pack_over_cp']:.2f}   "
               f"load_model speed / mlx_lm.load speed = {r['load_model_over_mlx_lm']:.2f}")  # fmt: skip
    out = Path(out or new_result("loadtime"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    click.echo(f"wrote {out}")

"""`python -m bench rawdisk`: the command of bench/harness/rawdisk.py."""

from __future__ import annotations

import click

from bench.harness.rawdisk import MiB, ReadResult, pread_extents, random_extents, sequential_read


def _report(name: str, r: ReadResult) -> str:
    return (f"{name}: {r.bytes / MiB:.1f} MiB in {r.seconds:.3f}s = {r.gb_per_s:.2f} GB/s, "
            f"{r.reads} reads, threads={r.threads} qd={r.queue_depth}, latency ms "
            f"mean {r.lat_mean_ms:.2f} p50 {r.lat_p50_ms:.2f} p99 {r.lat_p99_ms:.2f} "
            f"max {r.lat_max_ms:.2f}")



@click.group("rawdisk")
def command() -> None:
    """Raw-disk reference reads (no MLX)."""


@command.command("seq")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--block", default="1M", show_default=True, help="Read size.")
@click.option("--threads", default=1, show_default=True)
@click.option("--drop-cache/--warm", default=True, show_default=True,
              help="Drop the files' page cache first.")
def seq_cmd(files: tuple[str, ...], block: str, threads: int, drop_cache: bool) -> None:
    """Sequential read rate of FILES."""
    from mlxstore.sizes import parse_size

    r = sequential_read(files, parse_size(block), threads, drop_cache)
    click.echo(_report("seq", r))


@command.command("extents")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--size", default="4M", show_default=True, help="Bytes per extent.")
@click.option("--count", default=64, show_default=True)
@click.option("--threads", default=8, show_default=True)
@click.option("--qd", default=None, type=int, help="Reads in flight (default: threads).")
@click.option("--chunk", default=None, help="Split each extent into reads of this size.")
@click.option("--drop-cache/--warm", default=True, show_default=True)
@click.option("--seed", default=0, show_default=True)
def extents_cmd(files: tuple[str, ...], size: str, count: int, threads: int, qd: int | None,
                chunk: str | None, drop_cache: bool, seed: int) -> None:
    """Parallel pread of COUNT random 16 KiB-aligned extents of SIZE bytes from FILES."""
    from mlxstore.sizes import parse_size

    ext = random_extents(list(files), parse_size(size), count, seed=seed)
    r = pread_extents(ext, threads, qd, parse_size(chunk) if chunk else None, drop_cache)
    click.echo(_report("extents", r))


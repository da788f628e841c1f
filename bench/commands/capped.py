"""`python -m bench capped`: the command of bench/harness/cgroup.py."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from bench.harness.cgroup import CgroupUnavailable, run_capped
from mlxstore.sizes import parse_size


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"



@click.command("capped", context_settings={"ignore_unknown_options": True})
@click.option("--mem", required=True, help="Memory cap, e.g. 4G, 512M (binary units).")
@click.option("--drop-caches", is_flag=True, help="sync and drop the page cache first (root).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report here.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def command(mem: str, drop_caches: bool, json_out: str | None, cmd: tuple[str, ...]) -> None:
    """Run CMD in a child memory cgroup capped at --mem; report OOM kill and peak usage."""
    try:
        limit = parse_size(mem)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--mem") from None
    try:
        res = run_capped(cmd, limit, drop_caches=drop_caches)
    except (CgroupUnavailable, PermissionError) as e:
        raise click.ClickException(f"cannot cap memory here: {e}") from None
    except FileNotFoundError as e:
        raise click.ClickException(f"cannot run {cmd[0]!r}: {e}") from None
    click.echo(
        f"capped: rc={res.returncode} oom_killed={res.oom_killed} peak={_mib(res.peak_bytes)} "
        f"limit={_mib(res.limit_bytes)} failcnt={res.failcnt} wall={res.wall_s:.2f}s",
        err=True,
    )
    if json_out:
        Path(json_out).write_text(json.dumps(asdict(res), indent=1) + "\n")
    sys.exit(res.returncode if res.returncode >= 0 else 128 + (res.signal or 0))

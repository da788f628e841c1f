"""`mlxstore info DST`: what a store holds and where every byte of it lies."""

from __future__ import annotations

import json

import click

from mlxstore.sizes import format_size


def _where(x: dict) -> str:
    return f"{x['file']}@{x['offset']}+{x['length']}"


def _print(info: dict, extents: bool) -> None:
    sizes, loading = info["sizes"], info["loading"]
    echo = click.echo
    echo(f"store        {info['path']} (format {info['format_version']})")
    echo(f"model type   {info['model_type']}")
    echo(f"sizes        {format_size(sizes['dense_bytes'])} dense, "
         f"{format_size(sizes['expert_bytes'])} experts, "
         f"{format_size(sizes['embedded_file_bytes'])} embedded files")  # fmt: skip
    shards = ", ".join(f"{s['name']} ({format_size(s['size'])})" for s in info["shards"])
    echo(f"files        {shards}")
    echo(f"alignment    {info['alignment']} bytes")
    zstd = info["compression"]["zstd_tensors"]
    echo(f"compression  {len(zstd)} zstd tensor(s): {info['compression']['note']}")
    echo(f"loading      {'zero-copy' if loading['zero_copy'] else 'one copy'} "
         f"({loading['backend']} backend, {loading['platform']}): {loading['note']}")  # fmt: skip
    q = info["quantization"]
    schemes = ", ".join(f"{k} x{v}" for k, v in sorted(q["schemes"].items())) or "none"
    echo(f"quantization {q['modules']} modules: {schemes}")
    groups = info["expert_groups"]
    if not extents:
        in_groups = sum(1 for t in info["tensors"].values() if "expert_group" in t)
        echo(f"tensors      {len(info['tensors'])}: {len(info['tensors']) - in_groups} dense, "
             f"{in_groups} in expert groups")  # fmt: skip
        counts = sorted({g["num_experts"] for g in groups.values()})
        each = sorted({g["expert_bytes"] for g in groups.values()})
        echo(f"experts      {len(groups)} groups" + (
            f" of {'/'.join(map(str, counts))} experts, {'/'.join(format_size(b) for b in each)} each "
            "(one contiguous extent per expert)" if groups else ""))  # fmt: skip
        echo("(every tensor and expert extent: --extents)")
        return
    echo("")
    echo(f"tensors ({len(info['tensors'])}): name dtype shape encoding extents")
    for name, t in info["tensors"].items():
        if "expert_group" in t:
            where = f"{len(t['extents'])} expert pieces in group {t['expert_group']}"
        else:
            where = " ".join(_where(x) for x in t["extents"]) or "(empty)"
            if not t["mappable"]:
                where += " (compressed: decompressed on load, not mappable)"
        echo(f"  {name} {t['dtype']} {t['shape']} {t['encoding']} {where}")
    if groups:
        echo("")
        echo(f"expert groups ({len(info['expert_groups'])}): one contiguous extent per expert")
        for prefix, g in info["expert_groups"].items():
            echo(f"  {prefix}: {g['num_experts']} experts x {format_size(g['expert_bytes'])}, "
                 f"parts {', '.join(t[len(prefix) + 1:] for t in g['tensors'])}")  # fmt: skip
            for e, x in enumerate(g["extents"]):
                echo(f"    expert {e}: {_where(x)}")
    if info["files"]:
        echo("")
        echo(f"embedded files ({len(info['files'])})")
        for name, x in info["files"].items():
            echo(f"  {name} {_where(x)}")


@click.command()
@click.argument("store", type=click.Path(path_type=str))
@click.option("--extents", is_flag=True, help="Also list the byte extents of every tensor and expert.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (always complete).")
def info(store: str, extents: bool, as_json: bool) -> None:
    """Describe STORE: model, sizes, dense and expert bytes, groups, alignment, shards,
    compression and loading mode (--extents: where every tensor and expert lies)."""
    from mlxstore.formats import StoreError
    from mlxstore.info import store_info

    try:
        data = store_info(store)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print(data, extents)

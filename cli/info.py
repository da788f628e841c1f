"""`mlxstore info DST`: what a store holds and where every byte of it lies."""

from __future__ import annotations

import json

import click

from mlxstore.sizes import format_size


def _where(x: dict) -> str:
    return f"{x['file']}@{x['offset']}+{x['length']}"


def _print(info: dict) -> None:
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
    if info["expert_groups"]:
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(store: str, as_json: bool) -> None:
    """Describe STORE: model, sizes, alignment, shards, compression, and the byte extents
    of every tensor and every expert."""
    from mlxstore.formats import StoreError
    from mlxstore.info import store_info

    try:
        data = store_info(store)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print(data)

"""`mlxstore verify DST`: recompute every checksum; name whatever is damaged."""

from __future__ import annotations

import click


@click.command()
@click.argument("store", type=click.Path(path_type=str))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify(store: str, quiet: bool) -> None:
    """Check every tensor piece, expert and embedded file of STORE against its xxh3.

    Exit 0 when all match, 1 when something is damaged (each damaged item is printed),
    2 when the store cannot be opened at all.
    """
    from tqdm import tqdm

    from mlxstore.formats import StoreError, StoreReader

    try:
        reader = StoreReader(store)
    except StoreError as e:
        click.echo(f"Error: {e}", err=True)  # click.ClickException's prefix, as every command
        raise SystemExit(2) from None
    with reader:
        index = reader.index
        total = sum(p.length for t in index.tensors.values() for p in t.pieces)
        total += sum(p.length for p in index.files.values())
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=quiet,
                  desc="verify") as bar:  # fmt: skip
            bad = reader.verify(progress=bar.update)
    if bad:
        for what in bad:
            click.echo(f"damaged: {what}")
        click.echo(f"{len(bad)} damaged item(s) in {store}", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {len(index.tensors)} tensors, {len(index.files)} files, all checksums match")

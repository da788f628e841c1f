"""`mlxstore pack SRC DST`: write a store from a model directory or cached repo id."""

from __future__ import annotations

import time
import warnings

import click

from mlxstore.sizes import format_size

from .options import Size


@click.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--alignment", type=Size(), default="16KiB", show_default=True,
              help="Data alignment: a power of two >= 4096 (16 KiB is the Apple Silicon page).")
@click.option("--max-shard-size", type=Size(), default="5GiB", show_default=True,
              help="Start a new file when the next item would exceed this size.")
@click.option("--compress-dense", is_flag=True,
              help="zstd-compress dense tensors (smaller; they can then not be mapped in place).")
@click.option("--overwrite", is_flag=True,
              help="Replace DST if it is an mlxstore store holding nothing else (anything else is refused).")
@click.option("--no-tokenizer", is_flag=True,
              help="Pack without a tokenizer on purpose: tokenizer files are left out, no warning.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pack(src: str, dst: str, alignment: int, max_shard_size: int, compress_dense: bool,
         overwrite: bool, no_tokenizer: bool, quiet: bool) -> None:  # fmt: skip
    """Pack model SRC (an mlx-lm loadable directory, or a Hugging Face repo id already in
    the local cache) into a new store DST."""
    from mlxstore.formats import StoreError
    from mlxstore.info import store_info
    from mlxstore.pack import PackWarning
    from mlxstore.pack import pack as run_pack

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PackWarning)
        try:
            out = run_pack(src, dst, alignment=alignment, max_shard_bytes=max_shard_size, compress_dense=compress_dense,
                           overwrite=overwrite, progress=not quiet, tokenizer=not no_tokenizer)  # fmt: skip
        except StoreError as e:
            raise click.ClickException(str(e)) from None
        finally:
            for w in caught:
                if issubclass(w.category, PackWarning):
                    click.echo(f"Warning: {w.message}", err=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    seconds = time.perf_counter() - start
    info = store_info(out)
    sizes = info["sizes"]
    moved = sizes["dense_bytes"] + sizes["expert_bytes"]
    click.echo(
        f"packed {info['model_type']} into {out}: {format_size(sizes['total_file_bytes'])} in "
        f"{len(info['shards'])} file(s), {format_size(sizes['dense_bytes'])} dense + "
        f"{format_size(sizes['expert_bytes'])} experts in {len(info['expert_groups'])} groups, "
        f"{seconds:.2f} s ({format_size(int(moved / max(seconds, 1e-9)))}/s)"
    )

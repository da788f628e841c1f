"""`pack`: turn any model directory mlx-lm can load into an mlxstore store.

mlx-lm itself brings the checkpoint into its own names and shapes (sanitize, stacked
experts, per-module quantization), so the store holds exactly what mlx-lm's modules want.
Tensors are then materialized one at a time (one MoE layer's experts at a time) and
dropped after writing, so memory stays near the largest layer whatever the model size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from tqdm import tqdm

from mlxstore.formats import (
    DEFAULT_ALIGNMENT,
    DEFAULT_MAX_SHARD_BYTES,
    DTYPE_SIZES,
    StoreError,
    StoreWriter,
)

from .source import (
    LOOKED_FOR,
    Source,
    companion_files,
    has_tokenizer,
    is_tokenizer_file,
    open_source,
)
from .switches import find_switches, num_experts


class PackWarning(UserWarning):
    """Something the store will lack that the user may not have meant (the CLI prints it)."""


def dtype_name(dtype: mx.Dtype) -> str:
    """The store's name for an MLX dtype (SPEC.md section 3)."""
    name = str(dtype).rsplit(".", 1)[-1]
    if name not in DTYPE_SIZES:
        raise StoreError(f"dtype {name!r} cannot be stored")
    return name


def host_bytes(array: mx.array) -> np.ndarray:
    """An evaluated array as a C-contiguous numpy view of its bytes (no copy when it can).

    bfloat16 has no numpy dtype; its bits travel as uint16.
    """
    if array.dtype == mx.bfloat16:
        array = array.view(mx.uint16)
    mx.eval(array)
    return np.ascontiguousarray(np.asarray(array))


def expert_modules(model: nn.Module) -> dict[str, int]:
    """{path: num_experts} of every switch module of the model (mlxstore.switches)."""
    out = {}
    for site in find_switches(model):
        try:
            out[site.path] = num_experts(site.module)
        except ValueError as e:
            raise StoreError(f"{site.path}: {e}") from None
    return out


def quantized_modules(model: nn.Module) -> dict[str, dict]:
    """{path: {group_size, bits, mode}} of every quantized module of the model."""
    out = {}
    for path, module in model.named_modules():
        if all(hasattr(module, a) for a in ("bits", "group_size", "mode")):
            out[path] = {
                "group_size": int(module.group_size),
                "bits": int(module.bits),
                "mode": str(module.mode),
            }
    return dict(sorted(out.items()))


def plan(params: list[tuple[str, mx.array]], groups: dict[str, int]) -> list[tuple[str, list[int]]]:
    """Items in parameter order: (group prefix, member indices) or ("", [dense index]).

    An expert group is written where its first tensor appears; its members are the
    parameters under the prefix whose leading dimension is the number of experts.
    """
    items: list[tuple[str, list[int]]] = []
    placed: dict[str, int] = {}
    for i, (name, array) in enumerate(params):
        prefix = next((p for p in groups if name.startswith(p + ".")), None)
        if prefix is None or not array.ndim or array.shape[0] != groups[prefix]:
            items.append(("", [i]))
        elif prefix in placed:
            items[placed[prefix]][1].append(i)
        else:
            placed[prefix] = len(items)
            items.append((prefix, [i]))
    return items


def jsonable(obj):
    """`obj` as strict JSON: tuples become lists and non-finite floats are tagged the way
    transformers tags them ({"__float__": "NaN"}), which mlx-lm's load_config undoes."""
    if isinstance(obj, float) and obj != obj:
        return {"__float__": "NaN"}
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return {"__float__": "Infinity" if obj > 0 else "-Infinity"}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise StoreError(f"config value {obj!r} ({type(obj).__name__}) cannot be stored as JSON")


def _check_dst(source: Source, dst: Path) -> None:
    src, target = source.path.resolve(), dst.resolve()
    if target == src or target in src.parents:
        raise StoreError(f"{dst}: the store would replace its own source {source.path}")


def _load(source: Source) -> tuple[nn.Module, dict]:
    from mlxstore.mlxlm import load_model

    try:
        return load_model(source.path, lazy=True)
    except Exception as e:  # mlx-lm reports bad checkpoints with many exception types
        raise StoreError(
            f"{source.path}: mlx-lm cannot load this model: {type(e).__name__}: {e}"
        ) from None


def _materialize(name: str, array: mx.array) -> np.ndarray:
    try:
        return host_bytes(array)
    except Exception as e:  # a damaged source file surfaces only when its bytes are read
        raise StoreError(f"tensor {name!r}: cannot read it from the source: {e}") from None


def _experts(
    names: list[str], arrays: list[mx.array], tick: Callable[[int], None]
) -> Iterator[list[np.ndarray]]:
    """Yield each expert's slices of the group's tensors; the whole layer is in memory once."""
    hosts = [_materialize(n, a) for n, a in zip(names, arrays)]
    arrays.clear()
    for e in range(hosts[0].shape[0]):
        parts = [h[e] for h in hosts]
        yield parts
        tick(sum(p.nbytes for p in parts))


def pack(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    compress_dense: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer: bool = True,
) -> Path:
    """Pack model SRC (a directory or a cached HF repo id) into a new store at DST.

    Nothing appears at DST unless the whole store was written. `compress_dense` zstd-
    compresses dense tensors (for archival: they then cannot be mapped in place).
    A source without tokenizer files packs with a PackWarning (the store cannot generate
    text); `tokenizer=False` leaves tokenizer files out on purpose, without a warning.
    """
    from mlx_lm import __version__ as mlx_lm_version

    source = open_source(src)
    dst = Path(dst)
    _check_dst(source, dst)
    files = companion_files(source.path)
    if not tokenizer:
        files = [f for f in files if not is_tokenizer_file(f.name)]
    elif not has_tokenizer(f.name for f in files):
        import warnings

        warnings.warn(f"{source.path} has no tokenizer files (looked for {LOOKED_FOR}): the store "
                      "will not generate text; pass --no-tokenizer (tokenizer=False) if that is intended",
                      PackWarning, stacklevel=2)  # fmt: skip
    with StoreWriter(
        dst, alignment=alignment, max_shard_bytes=max_shard_bytes, overwrite=overwrite
    ) as writer:
        model, config = _load(source)
        groups = expert_modules(model)
        quant = quantized_modules(model)
        params = tree_flatten(model.parameters())
        del model  # from here on, each array is referenced by `params` alone
        items = plan(params, groups)
        expert_bytes = sum(params[i][1].nbytes for prefix, idx in items if prefix for i in idx)
        dense_bytes = sum(a.nbytes for _, a in params) - expert_bytes
        writer.index.config = jsonable(config)
        writer.index.quantization = quant or None
        writer.index.metadata = {
            "model_type": str(config.get("model_type", "")),
            "source": source.label,
            "mlx_lm_version": mlx_lm_version,
            "dense_bytes": str(dense_bytes),
            "expert_bytes": str(expert_bytes),
            **({} if tokenizer else {"tokenizer": "none"}),
        }
        file_bytes = sum(f.stat().st_size for f in files)
        total = dense_bytes + expert_bytes + file_bytes
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                   desc=f"pack {source.label}")  # fmt: skip
        with bar:
            for k, (prefix, idx) in enumerate(items):
                if k + 1 < len(items):  # read the next item from the source while this one is written
                    mx.async_eval([params[i][1] for i in items[k + 1][1]])
                names = [params[i][0] for i in idx]
                arrays = [params[i][1] for i in idx]
                for i in idx:
                    params[i] = (params[i][0], None)
                if prefix:
                    specs = [(n, dtype_name(a.dtype), a.shape) for n, a in zip(names, arrays)]
                    writer.add_expert_group(prefix, specs, _experts(names, arrays, bar.update))
                else:
                    array = arrays.pop()
                    data = _materialize(names[0], array)
                    writer.add_tensor(
                        names[0],
                        dtype_name(array.dtype),
                        array.shape,
                        data,
                        compress=compress_dense,
                    )
                    bar.update(array.nbytes)
                    del array, data
                mx.clear_cache()
            for f in files:
                try:
                    data = f.read_bytes()
                except OSError as e:
                    raise StoreError(f"{f}: cannot read: {e.strerror or e}") from None
                writer.add_file(f.name, data)
                bar.update(len(data))
        return writer.finish()

"""From a store to an mlx-lm model: the same classes, quantization and tokenizer mlx_lm.load uses.

A store keeps weights in mlx-lm's own parameter names (pack runs the model class's
`sanitize`), plus the exact quantization of every module, so building a model here is:
construct the class, quantize the modules the store says are quantized, load the weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxstore.formats import StoreError
from mlxstore.formats.index import nesting_ok
from mlxstore.formats.layout import MAX_JSON_DEPTH
from mlxstore.mlxlm import TokenizerWrapper, decode_tagged_floats, get_classes, load_tokenizer

from .source import LOOKED_FOR, has_tokenizer
from .store import Store
from .store import open as open_store

READ_THREADS = 4  # parallel tensor reads: one reader leaves a cold disk mostly idle


def model_config(store: Store) -> dict:
    """The model's config as mlx-lm resolved it at pack time."""
    if store.config is None:
        raise StoreError(f"{store.path}: store has no model config (it holds tensors, not a model)")
    return decode_tagged_floats(store.config)


def instantiate(config: dict, what: str = "the config") -> nn.Module:
    """mlx-lm's model class for `config`, constructed (lazy: nothing is allocated); anything
    its constructors raise on bad values becomes one StoreError naming `what`."""
    arch = config.get("model_type")
    try:
        model_class, args_class = get_classes(config)
        return model_class(args_class.from_dict(config))
    except Exception as e:  # noqa: BLE001 - mlx-lm has no error type of its own
        raise StoreError(f"architecture {arch!r}: {what} does not build a model: "
                         f"{type(e).__name__}: {e}") from None  # fmt: skip


def build_model(config: dict, quantization: dict[str, dict] | None) -> nn.Module:
    """The mlx-lm model object for `config`, quantized as recorded, weights not loaded.

    The config and quantization come from the store: whatever mlx-lm's constructors make of
    bad values (TypeError, ZeroDivisionError, OverflowError, ...) is the store's problem
    and is reported as StoreError.
    """
    model = instantiate(config, "the store's config")
    arch = config.get("model_type")
    if quantization:
        quantized = dict(quantization)

        def predicate(path: str, module: nn.Module) -> Any:
            q = quantized.get(path)
            if q is None or not hasattr(module, "to_quantized"):
                return False
            return {"group_size": q["group_size"], "bits": q["bits"], "mode": q.get("mode", "affine")}

        try:
            nn.quantize(model, class_predicate=predicate)
        except Exception as e:  # noqa: BLE001 - MLX reports bad bits or group sizes as ValueError
            raise StoreError(f"architecture {arch!r}: the store's quantization does not apply: "
                             f"{type(e).__name__}: {e}") from None  # fmt: skip
        missing = set(quantized) - {p for p, m in model.named_modules() if hasattr(m, "bits")}
        if missing:
            raise StoreError(f"store quantizes modules this model does not have: {sorted(missing)[:5]}")
    model.eval()
    return model


def load_store_tokenizer(store: Store, config: dict, tokenizer_config: dict | None = None) -> TokenizerWrapper:
    """mlx-lm's tokenizer from the files embedded in the store.

    A store is data: its Python files are not extracted and transformers is told not to
    trust remote code (it would otherwise offer to run a store's `auto_map` code on a y/N
    prompt), unless the caller passes tokenizer_config={"trust_remote_code": True}.
    """
    options = {"trust_remote_code": False, **(tokenizer_config or {})}
    names = [n for n in store.files if options["trust_remote_code"] or not n.endswith(".py")]
    if not has_tokenizer(names):
        why = ("it was packed with --no-tokenizer" if store.metadata.get("tokenizer") == "none"
               else "its source had none")  # fmt: skip
        raise StoreError(f"{store.path.parent} has no tokenizer ({why}): repack it from a model directory "
                         f"with tokenizer files ({LOOKED_FOR})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mlxstore-tok-") as tmp:
        for name in names:
            data = store.read_file(name)
            if name.endswith(".json") and not nesting_ok(data, MAX_JSON_DEPTH):  # json.load recurses in C
                raise StoreError(f"{store.path}: embedded file {name!r} nests deeper than {MAX_JSON_DEPTH} levels")
            Path(tmp, name).write_bytes(data)
        if "config.json" not in names:
            Path(tmp, "config.json").write_text(json.dumps(store.config))
        try:
            return load_tokenizer(Path(tmp), options, eos_token_ids=config.get("eos_token_id"))
        except (ValueError, OSError, KeyError, TypeError, ImportError, RecursionError) as e:  # transformers' refusals
            raise StoreError(f"{store.path}: cannot load the embedded tokenizer: {type(e).__name__}: {e}") from None


def load_weights(model: nn.Module, store: Store, names: Iterable[str], *, check: bool = False) -> None:
    """Materialize `names` from the store into the model (strictly: every name must exist)."""
    names = list(names)
    check_shapes(model, store, names)
    weights = list(zip(names, store.arrays(names, check=check, threads=READ_THREADS)))  # preadv releases the GIL
    model.load_weights(weights, strict=False)
    mx.eval([w for _, w in weights])


def check_shapes(model: nn.Module, store: Store, names: Iterable[str]) -> None:
    """The store's tensors have the model's parameter shapes (from the index, nothing read).

    mlx-lm's load_weights(strict=False) takes a tensor of any shape; the error, or an
    out-of-range gather, would only come at run time.
    """
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    wrong = [(n, store.tensor(n).shape, tuple(params[n].shape)) for n in names
             if n in params and store.tensor(n).shape != tuple(params[n].shape)]  # fmt: skip
    if wrong:
        n, got, want = wrong[0]
        raise StoreError(f"store tensor {n!r} has shape {list(got)}, the {type(model).__module__} model "
                         f"expects {list(want)} ({len(wrong)} tensor(s) do not fit)")  # fmt: skip


def check_complete(model: nn.Module, names: set[str], skip_prefixes: Iterable[str] = ()) -> None:
    """Every parameter of the model is either loaded or deliberately skipped."""
    from mlx.utils import tree_flatten

    skip = tuple(f"{p}." for p in skip_prefixes)
    params = {k for k, _ in tree_flatten(model.parameters()) if not k.startswith(skip)}
    missing, extra = params - names, {n for n in names if not n.startswith(skip)} - params
    if missing or extra:
        raise StoreError(
            f"store does not match the {type(model).__module__} model: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
        )


def load_model(
    path: str | os.PathLike,
    *,
    tokenizer_config: dict | None = None,
    check: bool = False,
    return_config: bool = False,
):
    """`(model, tokenizer)` from a store, exactly like `mlx_lm.load` from the source directory."""
    store = open_store(path)
    config = model_config(store)
    model = build_model(config, store.quantization)
    names = list(store.tensor_names)
    check_complete(model, set(names))
    load_weights(model, store, names, check=check)
    tokenizer = load_store_tokenizer(store, config, tokenizer_config)
    store.close()
    if return_config:
        return model, tokenizer, config
    return model, tokenizer

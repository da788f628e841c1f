"""mlxstore: page-aligned tensor stores and SSD streaming of MoE experts for MLX.

Names are imported on first use (PEP 562), so `mlxstore --help` and `mlxstore info` do
not pay for importing mlx-lm and transformers.
"""

from __future__ import annotations

import importlib

from mlxstore.formats import ChecksumError, StoreError

from .sizes import format_size, parse_size

_LAZY = {"LazyTensors": "lazy", "load": "lazy", "load_model": "model", "Store": "store", "open": "store"}

__all__ = [
    "ChecksumError", "LazyTensors", "Store", "StoreError", "format_size", "load", "load_model", "open",
    "parse_size",
]  # fmt: skip


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mlxstore' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)

"""mlxstore: page-aligned tensor stores and SSD streaming of MoE experts for MLX."""

from .formats import ChecksumError, StoreError
from .lazy import LazyTensors, load
from .model import load_model
from .sizes import format_size, parse_size
from .store import Store, open

__all__ = [
    "ChecksumError", "LazyTensors", "Store", "StoreError", "format_size", "load", "load_model", "open",
    "parse_size",
]  # fmt: skip

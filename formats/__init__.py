"""Bytes on disk: the mlxstore container (SPEC.md) and readers of foreign formats. No MLX."""

from .errors import ChecksumError, StoreError
from .index import ExpertGroup, Extent, Index, Piece, Tensor
from .layout import DEFAULT_ALIGNMENT, DTYPE_SIZES
from .reader import StoreReader, resolve_primary
from .writer import DEFAULT_MAX_SHARD_BYTES, StoreWriter

__all__ = [
    "DEFAULT_ALIGNMENT", "DEFAULT_MAX_SHARD_BYTES", "DTYPE_SIZES", "ChecksumError", "Extent",
    "ExpertGroup", "Index", "Piece", "StoreError", "StoreReader", "StoreWriter", "Tensor",
    "resolve_primary",
]  # fmt: skip

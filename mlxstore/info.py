"""What a store holds and where its bytes are: the data behind `mlxstore info`.

Plain dicts of JSON types, so the CLI can print them as a table or dump them as JSON and
tests can check layout claims (alignment, one extent per expert) from the numbers alone.
"""

from __future__ import annotations

import os
import platform

import mlx.core as mx

from mlxstore.formats import Index, StoreReader
from mlxstore.formats.index import Extent, Piece

from .buffers import can_wrap


def load_mode() -> dict:
    """How arrays come out of a mapped store with this machine's MLX backend.

    Metal adopts page-aligned mapped memory as a buffer, so a raw dense tensor becomes an
    array without a copy. The CPU and CUDA backends allocate their own memory, so each
    tensor is copied once from the file. Probed, not guessed from the platform.
    """
    cuda = getattr(mx, "cuda", None)
    if mx.metal.is_available():
        backend = "metal"
    elif cuda is not None and cuda.is_available():
        backend = "cuda"
    else:
        backend = "cpu"
    zero_copy = can_wrap()
    if zero_copy:
        note = "raw dense tensors are wrapped in place (zero-copy); zstd ones are decompressed"
    else:
        note = f"the {backend} backend copies each tensor once from the file"
    return {
        "backend": backend,
        "default_device": str(mx.default_device()),
        "platform": f"{platform.system()} {platform.machine()}",
        "zero_copy": zero_copy,
        "note": note,
    }


def _extent(index: Index, x: Piece | Extent) -> dict:
    return {"file": index.shards[x.shard].name, "shard": x.shard, "offset": x.offset, "length": x.length}


def _tensor(index: Index, t) -> dict:
    out = {
        "dtype": t.dtype,
        "shape": list(t.shape),
        "encoding": t.encoding,
        "bytes": t.nbytes,
        "stored_bytes": t.stored_bytes,
        "mappable": t.encoding == "raw" and t.expert_group is None,
        "extents": [_extent(index, p) for p in t.pieces],
    }
    if t.expert_group is not None:
        out["expert_group"] = t.expert_group
    return out


def store_info(path: str | os.PathLike) -> dict:
    """Everything `mlxstore info` reports about the store at `path` (reads the index only)."""
    with StoreReader(path) as reader:
        index = reader.index
        primary = str(reader.primary)
    tensors = {n: _tensor(index, t) for n, t in index.tensors.items()}
    expert_bytes = sum(t.nbytes for t in index.tensors.values() if t.expert_group is not None)
    dense_bytes = sum(t.nbytes for t in index.tensors.values() if t.expert_group is None)
    compressed = [n for n, t in index.tensors.items() if t.encoding == "zstd"]
    groups = {
        prefix: {
            "num_experts": g.num_experts,
            "tensors": list(g.tensors),
            "expert_bytes": max((x.length for x in g.extents), default=0),
            "extents": [_extent(index, x) for x in g.extents],
        }
        for prefix, g in index.expert_groups.items()
    }
    quant = index.quantization or {}
    schemes: dict[str, int] = {}
    for q in quant.values():
        key = f"{q.get('mode', 'affine')} {q['bits']}-bit g{q['group_size']}"
        schemes[key] = schemes.get(key, 0) + 1
    return {
        "path": primary,
        "format_version": f"1.{index.minor}",
        "model_type": index.metadata.get("model_type") or (index.config or {}).get("model_type"),
        "alignment": index.alignment,
        "shards": [{"name": s.name, "size": s.size} for s in index.shards],
        "required_features": list(index.required_features),
        "sizes": {
            "dense_bytes": dense_bytes,
            "expert_bytes": expert_bytes,
            "stored_tensor_bytes": sum(t.stored_bytes for t in index.tensors.values()),
            "embedded_file_bytes": sum(p.length for p in index.files.values()),
            "total_file_bytes": sum(s.size for s in index.shards),
        },
        "compression": {
            "zstd_tensors": compressed,
            "note": "zstd tensors are decompressed into memory on load and cannot be mapped"
            if compressed
            else "none: every dense tensor can be mapped in place",
        },
        "loading": load_mode(),
        "quantization": {"modules": len(quant), "schemes": schemes, "per_module": quant},
        "metadata": dict(index.metadata),
        "files": {n: _extent(index, p) for n, p in index.files.items()},
        "tensors": tensors,
        "expert_groups": groups,
    }

"""The store index (SPEC.md section 3): JSON text <-> validated dataclasses.

Everything in an index is untrusted. `parse_index` checks every type, range and
cross-reference before returning, so code that holds an `Index` can trust its offsets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StoreError
from .layout import (
    DTYPE_SIZES,
    FEATURES,
    MAJOR,
    MAX_DIM,
    MAX_ITEMS,
    MAX_JSON_DEPTH,
    MAX_NDIM,
    MAX_TENSOR_BYTES,
    check_alignment,
    check_file_name,
    zstd_max_output,
)


@dataclass(frozen=True)
class Piece:
    shard: int
    offset: int
    length: int
    xxh3: int

    def to_json(self) -> dict:
        return {"shard": self.shard, "offset": self.offset, "length": self.length,
                "xxh3": f"{self.xxh3:016x}"}  # fmt: skip


@dataclass(frozen=True)
class Extent:
    shard: int
    offset: int
    length: int

    def to_json(self) -> dict:
        return {"shard": self.shard, "offset": self.offset, "length": self.length}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    pieces: tuple[Piece, ...]
    expert_group: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    @property
    def stored_bytes(self) -> int:
        return sum(p.length for p in self.pieces)

    def to_json(self) -> dict:
        out = {"dtype": self.dtype, "shape": list(self.shape), "encoding": self.encoding,
               "pieces": [p.to_json() for p in self.pieces]}  # fmt: skip
        if self.expert_group is not None:
            out["expert_group"] = self.expert_group
        return out


@dataclass(frozen=True)
class ExpertGroup:
    prefix: str
    num_experts: int
    tensors: tuple[str, ...]
    extents: tuple[Extent, ...]

    def to_json(self) -> dict:
        return {"num_experts": self.num_experts, "tensors": list(self.tensors),
                "extents": [e.to_json() for e in self.extents]}  # fmt: skip


@dataclass(frozen=True)
class Shard:
    name: str
    size: int


@dataclass
class Index:
    alignment: int
    shards: list[Shard]
    tensors: dict[str, Tensor]
    expert_groups: dict[str, ExpertGroup] = field(default_factory=dict)
    files: dict[str, Piece] = field(default_factory=dict)
    config: dict | None = None
    quantization: dict[str, dict] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    required_features: list[str] = field(default_factory=list)
    minor: int = 0

    def to_json_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "format": "mlxstore",
            "version": [MAJOR, self.minor],
            "alignment": self.alignment,
            "required_features": list(self.required_features),
            "shards": [{"name": s.name, "size": s.size} for s in self.shards],
        }
        if self.config is not None:
            obj["config"] = self.config
        if self.quantization is not None:
            obj["quantization"] = self.quantization
        obj["metadata"] = dict(self.metadata)
        obj["files"] = {k: v.to_json() for k, v in self.files.items()}
        obj["tensors"] = {k: v.to_json() for k, v in self.tensors.items()}
        obj["expert_groups"] = {k: v.to_json() for k, v in self.expert_groups.items()}
        try:  # strict JSON: NaN or Infinity would make the index unreadable
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise StoreError(f"index: cannot be written as strict JSON: {e}") from None
        return text.encode("utf-8")


# ---------------------------------------------------------------- parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise StoreError(f"index: duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise StoreError(f"index: {name} is not valid JSON")


def _get(obj: dict, key: str, kind: type | tuple, where: str, required: bool = True) -> Any:
    if key not in obj:
        if required:
            raise StoreError(f"index: {where} lacks {key!r}")
        return None
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise StoreError(f"index: {where}.{key} is {type(value).__name__}, expected an integer")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StoreError(f"index: {where}.{key} is {type(value).__name__}, expected {names}")
    return value


def _uint(obj: dict, key: str, where: str, limit: int = 1 << 63) -> int:
    value = _get(obj, key, int, where)
    if not 0 <= value < limit:
        raise StoreError(f"index: {where}.{key} = {value} is out of range")
    return value


def _hex64(obj: dict, key: str, where: str) -> int:
    value = _get(obj, key, str, where)
    if len(value) != 16:
        raise StoreError(f"index: {where}.{key} is not a 16-digit hex checksum")
    try:
        return int(value, 16)
    except ValueError:
        raise StoreError(f"index: {where}.{key} is not a 16-digit hex checksum") from None


class _Bounds:
    """Checks that pieces and extents lie in their files' data regions."""

    def __init__(self, alignment: int, data_ends: list[int]):
        self.alignment = alignment
        self.data_ends = data_ends

    def check(self, shard: int, offset: int, length: int, where: str) -> None:
        if shard >= len(self.data_ends):
            raise StoreError(f"index: {where} names shard {shard}, the store has {len(self.data_ends)}")
        if offset < self.alignment or offset + length > self.data_ends[shard]:
            raise StoreError(
                f"index: {where} bytes [{offset}, {offset + length}) lie outside the data of "
                f"shard {shard} [{self.alignment}, {self.data_ends[shard]})"
            )


def _piece(raw: Any, where: str, bounds: _Bounds) -> Piece:
    if not isinstance(raw, dict):
        raise StoreError(f"index: {where} is not an object")
    piece = Piece(_uint(raw, "shard", where), _uint(raw, "offset", where),
                  _uint(raw, "length", where), _hex64(raw, "xxh3", where))  # fmt: skip
    bounds.check(piece.shard, piece.offset, piece.length, where)
    return piece


def _tensor(name: str, raw: Any, bounds: _Bounds, counter: list[int]) -> Tensor:
    where = f"tensor {name!r}"
    if not isinstance(raw, dict):
        raise StoreError(f"index: {where} is not an object")
    dtype = _get(raw, "dtype", str, where)
    if dtype not in DTYPE_SIZES:
        raise StoreError(f"index: {where} has unknown dtype {dtype!r}")
    shape_raw = _get(raw, "shape", list, where)
    if len(shape_raw) > MAX_NDIM:
        raise StoreError(f"index: {where} has {len(shape_raw)} dimensions (limit {MAX_NDIM})")
    nbytes = DTYPE_SIZES[dtype]
    for dim in shape_raw:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < MAX_DIM:
            raise StoreError(f"index: {where} has a bad dimension {dim!r} in its shape")
        nbytes *= dim
        if nbytes >= MAX_TENSOR_BYTES:
            raise StoreError(f"index: {where} shape {shape_raw} is too large")
    shape = tuple(shape_raw)
    encoding = _get(raw, "encoding", str, where)
    pieces_raw = _get(raw, "pieces", list, where)
    counter[0] += len(pieces_raw)
    if counter[0] > MAX_ITEMS:
        raise StoreError(f"index: more than {MAX_ITEMS} pieces")
    pieces = tuple(_piece(p, f"{where} piece {i}", bounds) for i, p in enumerate(pieces_raw))
    group = _get(raw, "expert_group", str, where, required=False)
    stored = sum(p.length for p in pieces)
    if encoding == "raw":
        if stored != nbytes:
            raise StoreError(f"index: {where} pieces hold {stored} bytes, its shape needs {nbytes}")
        if group is None:
            if len(pieces) > 1:
                raise StoreError(f"index: {where} is not an expert tensor but has {len(pieces)} pieces")
            if pieces and pieces[0].offset % bounds.alignment:
                raise StoreError(f"index: {where} data is not aligned to {bounds.alignment}")
    elif encoding == "zstd":
        if group is not None:
            raise StoreError(f"index: {where} is an expert tensor and cannot be compressed")
        if len(pieces) != 1:
            raise StoreError(f"index: {where} is zstd-encoded and must have exactly one piece")
        if nbytes > zstd_max_output(pieces[0].length):
            raise StoreError(f"index: {where} claims {nbytes} bytes, more than a zstd frame of "
                             f"{pieces[0].length} bytes can hold")  # fmt: skip
    else:
        raise StoreError(f"index: {where} has unknown encoding {encoding!r}")
    return Tensor(name, dtype, shape, encoding, pieces, group)


def _group(prefix: str, raw: Any, tensors: dict[str, Tensor], bounds: _Bounds) -> ExpertGroup:
    where = f"expert group {prefix!r}"
    if not isinstance(raw, dict):
        raise StoreError(f"index: {where} is not an object")
    num = _uint(raw, "num_experts", where, MAX_ITEMS + 1)
    names = _get(raw, "tensors", list, where)
    extents_raw = _get(raw, "extents", list, where)
    if len(extents_raw) != num:
        raise StoreError(f"index: {where} has {len(extents_raw)} extents for {num} experts")
    extents = []
    for e, ext in enumerate(extents_raw):
        w = f"{where} extent {e}"
        if not isinstance(ext, dict):
            raise StoreError(f"index: {w} is not an object")
        x = Extent(_uint(ext, "shard", w), _uint(ext, "offset", w), _uint(ext, "length", w))
        bounds.check(x.shard, x.offset, x.length, w)
        if x.offset % bounds.alignment:
            raise StoreError(f"index: {w} is not aligned to {bounds.alignment}")
        extents.append(x)
    members = []
    for name in names:
        tensor = tensors.get(name) if isinstance(name, str) else None
        if tensor is None:
            raise StoreError(f"index: {where} names unknown tensor {name!r}")
        if tensor.expert_group != prefix:
            raise StoreError(f"index: {where} lists {name!r}, which belongs to {tensor.expert_group!r}")
        if not tensor.shape or tensor.shape[0] != num or len(tensor.pieces) != num:
            raise StoreError(f"index: {where} tensor {name!r} is not stacked over {num} experts")
        members.append(name)
    if len(set(members)) != len(members):
        raise StoreError(f"index: {where} lists a tensor twice")
    for name in members:
        t = tensors[name]
        row = t.nbytes // num
        if any(p.length != row for p in t.pieces):  # readers size each expert's slice by the shape
            raise StoreError(f"index: {where} tensor {name!r} has an expert piece that is not {row} bytes")
    for e, x in enumerate(extents):
        cursor = x.offset
        for name in members:
            p = tensors[name].pieces[e]
            if p.shard != x.shard or p.offset < cursor or p.offset + p.length > x.offset + x.length:
                raise StoreError(f"index: {where} expert {e}: {name!r} lies outside its extent")
            cursor = p.offset + p.length
        if members and (tensors[members[0]].pieces[e].offset != x.offset or cursor != x.offset + x.length):
            raise StoreError(f"index: {where} extent {e} is not the span of its parts")
    return ExpertGroup(prefix, num, tuple(members), tuple(extents))


def _check_no_overlap(index: Index) -> None:
    spans = [(p.shard, p.offset, p.length, n) for n, t in index.tensors.items() for p in t.pieces]
    spans += [(p.shard, p.offset, p.length, f"file {n!r}") for n, p in index.files.items()]
    spans.sort()
    for (s0, o0, l0, n0), (s1, o1, _, n1) in zip(spans, spans[1:]):
        if s0 == s1 and o0 + l0 > o1:
            raise StoreError(f"index: data of {n0!r} and {n1!r} overlap in shard {s0}")


_DROP = bytes(c for c in range(256) if c not in b'"[]{}')


def nesting_ok(text: bytes, limit: int) -> bool:
    """Whether arrays and objects nest at most `limit` deep, found without recursion.

    Why: Python's JSON parser recurses in C once per level; with a raised recursion limit,
    deep input overflows the C stack (SIGSEGV) instead of raising RecursionError. Escaped
    backslashes and quotes go first, so every quote left opens or closes a string.
    """
    kept = text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    depth, quotes, chunk = 0, 0, 1 << 18
    for start in range(0, len(kept), chunk):
        part = np.frombuffer(kept, np.uint8, min(chunk, len(kept) - start), start)
        seen = np.cumsum(part == 0x22, dtype=np.int32) + quotes
        step = ((part == 0x5B) | (part == 0x7B)).astype(np.int8) - ((part == 0x5D) | (part == 0x7D))
        step[(seen & 1) == 1] = 0  # inside a string
        levels = np.cumsum(step, dtype=np.int32) + depth
        if levels.max() > limit:
            return False
        depth, quotes = int(levels[-1]), int(seen[-1]) & 1
    return True


def decode(text: bytes) -> dict:
    """Index bytes as a JSON object: strict UTF-8 and JSON, no duplicate keys, no NaN."""
    if not nesting_ok(text, MAX_JSON_DEPTH):
        raise StoreError(f"index: nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        obj = json.loads(
            text.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError:
        raise StoreError("index: not valid UTF-8") from None
    except RecursionError:
        raise StoreError("index: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and integers beyond Python's digit limit
        raise StoreError(f"index: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise StoreError("index: not a JSON object")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_index(text: bytes, alignment: int, data_ends: list[int], minor: int = 0) -> Index:
    """Parse and validate index bytes; `data_ends[i]` is where shard i's data must end."""
    obj = decode(text)
    if obj.get("format") != "mlxstore":
        raise StoreError(f"index: format is {obj.get('format')!r}, expected 'mlxstore'")
    version = _get(obj, "version", list, "index")
    if len(version) != 2 or not all(map(_is_int, version)) or version != [MAJOR, minor]:
        raise StoreError(f"index: version {version!r} does not match the preamble's {MAJOR}.{minor}")
    if _get(obj, "alignment", int, "index") != alignment:
        raise StoreError("index: alignment does not match the preamble's")
    check_alignment(alignment)
    features = _get(obj, "required_features", list, "index")
    if not all(isinstance(f, str) for f in features):
        raise StoreError("index: required_features must be a list of strings")
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise StoreError(
            f"store requires features this reader does not implement: {unknown!r} "
            f"(known: {sorted(FEATURES)}); upgrade mlxstore"
        )
    shards_raw = _get(obj, "shards", list, "index")
    if len(shards_raw) != len(data_ends):
        raise StoreError(f"index: lists {len(shards_raw)} shards, the preamble says {len(data_ends)}")
    shards = []
    for i, s in enumerate(shards_raw):
        if not isinstance(s, dict):
            raise StoreError(f"index: shard {i} is not an object")
        shards.append(Shard(check_file_name(_get(s, "name", str, f"shard {i}"), f"shard {i} name"),
                            _uint(s, "size", f"shard {i}")))  # fmt: skip
    if len({s.name for s in shards}) != len(shards):
        raise StoreError("index: two shards have the same file name")
    bounds = _Bounds(alignment, data_ends)
    config = _get(obj, "config", dict, "index", required=False)
    quant = _get(obj, "quantization", dict, "index", required=False)
    if quant is not None:
        for path, q in quant.items():
            if not isinstance(q, dict):
                raise StoreError(f"index: quantization of {path!r} is not an object")
            for key in ("group_size", "bits"):
                _uint(q, key, f"quantization {path!r}", 1 << 16)
            _get(q, "mode", str, f"quantization {path!r}")
    metadata = _get(obj, "metadata", dict, "index", required=False) or {}
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise StoreError(f"index: metadata {k!r} is {type(v).__name__}, expected a string")
    files_raw = _get(obj, "files", dict, "index", required=False) or {}
    files = {check_file_name(n, "embedded file"): _piece(p, f"file {n!r}", bounds)
             for n, p in files_raw.items()}  # fmt: skip
    tensors_raw = _get(obj, "tensors", dict, "index")
    if len(tensors_raw) > MAX_ITEMS:
        raise StoreError(f"index: more than {MAX_ITEMS} tensors")
    counter = [0]
    tensors = {n: _tensor(n, t, bounds, counter) for n, t in tensors_raw.items()}
    groups_raw = _get(obj, "expert_groups", dict, "index", required=False) or {}
    groups = {p: _group(p, g, tensors, bounds) for p, g in groups_raw.items()}
    for name, t in tensors.items():
        if t.expert_group is not None and (
            t.expert_group not in groups or name not in groups[t.expert_group].tensors
        ):
            raise StoreError(f"index: tensor {name!r} names expert group {t.expert_group!r} that does not list it")
    compressed = next((n for n, t in tensors.items() if t.encoding == "zstd"), None)
    if compressed is not None and "zstd" not in features:
        raise StoreError(f"index: tensor {compressed!r} is zstd-encoded but 'zstd' is not a required feature")
    index = Index(alignment, shards, tensors, groups, files, config, quant, metadata, features, minor)
    _check_no_overlap(index)
    return index

"""Fixed facts of the byte layout (SPEC.md sections 1, 2 and 7): preamble, dtypes, names."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import xxhash

from .errors import StoreError

MAGIC = b"MLXSTORE"
MAJOR, MINOR = 1, 0
PREAMBLE = struct.Struct("<8sHHIIIQQQQQ")
PREAMBLE_SIZE = 64
DEFAULT_ALIGNMENT = 16384
MIN_ALIGNMENT = 4096
MAX_ALIGNMENT = 1 << 30
PART_ALIGNMENT = 64
MAX_INDEX_BYTES = 256 << 20
MAX_ITEMS = 1 << 24
MAX_SHARDS = 65535
MAX_NDIM = 64
MAX_DIM = 1 << 31  # MLX stores each dimension as an int32
MAX_JSON_DEPTH = 64  # arrays and objects in the index nest at most this deep
MAX_TENSOR_BYTES = 1 << 62
PRIMARY_NAME = "model.mlxs"
FEATURES = frozenset({"zstd"})

DTYPE_SIZES = {
    "bool": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "complex64": 8,
}  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def xxh3(data) -> int:
    """XXH3-64 of a bytes-like object."""
    return xxhash.xxh3_64_intdigest(data)


def xxh3_hex(value: int) -> str:
    return f"{value:016x}"


def shard_name(shard: int) -> str:
    return PRIMARY_NAME if shard == 0 else f"model-{shard:05d}.mlxs"


def check_file_name(name: object, what: str) -> str:
    """A file name from an index: a plain name inside the store's directory, nothing else."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise StoreError(f"{what}: {name!r} is not a plain file name inside the store")
    return name


def zstd_max_output(frame_bytes: int) -> int:
    """The most a zstd frame of this size can decompress to: every block of at most 128 KiB
    of output costs at least 3 bytes of block header. Claims above this are lies."""
    return (frame_bytes // 3 + 1) << 17


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def extent_length(part_sizes) -> int:
    """Bytes of one expert's extent: its parts in order, each after the first starting on a
    PART_ALIGNMENT boundary (SPEC.md section 4)."""
    length = 0
    for size in part_sizes:
        length = align_up(length, PART_ALIGNMENT) + size
    return length


def check_alignment(alignment: int) -> int:
    if (
        not isinstance(alignment, int)
        or alignment < MIN_ALIGNMENT
        or alignment > MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise StoreError(
            f"alignment {alignment!r} is not a power of two between {MIN_ALIGNMENT} and {MAX_ALIGNMENT}"
        )
    return alignment


@dataclass(frozen=True)
class Preamble:
    shard: int
    shard_count: int
    alignment: int
    index_offset: int
    index_length: int
    index_xxh3: int
    file_size: int
    minor: int = MINOR

    def pack(self) -> bytes:
        head = PREAMBLE.pack(
            MAGIC, MAJOR, self.minor, self.shard, self.shard_count, self.alignment,
            self.index_offset, self.index_length, self.index_xxh3, self.file_size, 0,
        )[:56]  # fmt: skip
        return head + struct.pack("<Q", xxh3(head))


def parse_preamble(raw: bytes, what: str) -> Preamble:
    """Check the 64-byte preamble in the order SPEC.md section 2 gives."""
    if len(raw) < PREAMBLE_SIZE:
        raise StoreError(f"{what}: file is {len(raw)} bytes, too short for a store preamble")
    magic, major, minor, shard, count, alignment, ioff, ilen, ixxh, fsize, pxxh = PREAMBLE.unpack(
        raw[:PREAMBLE_SIZE]
    )
    if magic != MAGIC:
        raise StoreError(f"{what}: not an mlxstore file (wrong magic {magic!r})")
    if pxxh != xxh3(raw[:56]):
        raise StoreError(f"{what}: preamble checksum mismatch (damaged header)")
    if major != MAJOR:
        raise StoreError(
            f"{what}: format version {major}.{minor} is not supported (this reader reads {MAJOR}.x)"
        )
    try:
        check_alignment(alignment)
    except StoreError as e:
        raise StoreError(f"{what}: {e}") from None
    if not 1 <= count <= MAX_SHARDS or shard >= count:
        raise StoreError(f"{what}: shard {shard} of {count} is out of range")
    return Preamble(shard, count, alignment, ioff, ilen, ixxh, fsize, minor)

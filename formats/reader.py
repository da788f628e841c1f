"""Opening a store: validate preambles and index first, then read pieces with `pread`.

No mapping and no MLX here: this module hands out bytes and file descriptors. Every read
checks its length, so a file that shrank after open raises instead of returning garbage.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

from .errors import ChecksumError, StoreError
from .index import Extent, Index, Piece, Tensor, decode, parse_index
from .layout import (
    MAX_INDEX_BYTES,
    PREAMBLE_SIZE,
    PRIMARY_NAME,
    check_file_name,
    parse_preamble,
    xxh3,
)


def resolve_primary(path: str | os.PathLike) -> Path:
    """A store is named by its directory or by its primary file."""
    p = Path(path)
    if p.is_dir():
        p = p / PRIMARY_NAME
    if not p.exists():
        raise StoreError(f"{path}: no such store (missing {p.name})")
    return p


def pread_exact(fd: int, length: int, offset: int, what: str) -> bytes:
    """Read exactly `length` bytes or raise: a short read means the file changed under us."""
    chunks, done = [], 0
    while done < length:
        try:
            chunk = os.pread(fd, min(length - done, 1 << 30), offset + done)
        except OSError as e:
            raise StoreError(f"{what}: read of {length} bytes at {offset} failed: {e}") from e
        if not chunk:
            raise StoreError(f"{what}: short read, {done} of {length} bytes at offset {offset} (file truncated?)")
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def preadinto_exact(fd: int, buf: memoryview, offset: int, what: str) -> None:
    """Fill `buf` from `offset` or raise; loops over partial reads."""
    done, length = 0, len(buf)
    while done < length:
        try:
            n = os.preadv(fd, [buf[done:]], offset + done)
        except OSError as e:
            raise StoreError(f"{what}: read of {length} bytes at {offset} failed: {e}") from e
        if n == 0:
            raise StoreError(f"{what}: short read, {done} of {length} bytes at offset {offset} (file truncated?)")
        done += n


class StoreReader:
    """An open store: its validated index and one read-only descriptor per file."""

    def __init__(self, path: str | os.PathLike):
        self.primary = resolve_primary(path)
        self.directory = self.primary.parent
        self.fds: list[int] = []
        try:
            self.index = self._open()
        except BaseException:
            self.close()
            raise

    def _open_file(self, path: Path, shard: int):
        what = f"{path}"
        # Only regular files: opening a FIFO would block, and a device or directory is no store.
        # O_NONBLOCK keeps the open itself from blocking if the file is swapped meanwhile.
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise StoreError(f"{what}: not a regular file")
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise StoreError(f"{what}: cannot open store file: {e.strerror}") from None
        self.fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{what}: not a regular file")
        size = info.st_size
        try:
            head = os.pread(fd, PREAMBLE_SIZE, 0)
        except OSError as e:
            raise StoreError(f"{what}: cannot read the preamble: {e.strerror}") from None
        pre = parse_preamble(head, what)
        if pre.file_size != size:
            raise StoreError(f"{what}: file is {size} bytes, its header says {pre.file_size} (truncated or extended)")
        if pre.shard != shard:
            raise StoreError(f"{what}: is shard {pre.shard}, expected shard {shard}")
        if size < pre.alignment and size != PREAMBLE_SIZE:
            raise StoreError(f"{what}: file is shorter than its alignment {pre.alignment}")
        return fd, pre

    def _open(self) -> Index:
        what = str(self.primary)
        fd, pre = self._open_file(self.primary, 0)
        if pre.index_length < 1 or pre.index_length > MAX_INDEX_BYTES:
            raise StoreError(f"{what}: index length {pre.index_length} is out of range (1..{MAX_INDEX_BYTES})")
        if pre.index_offset < pre.alignment or pre.index_offset + pre.index_length != pre.file_size:
            raise StoreError(f"{what}: index at [{pre.index_offset}, +{pre.index_length}) does not end the file")
        text = pread_exact(fd, pre.index_length, pre.index_offset, what)
        if xxh3(text) != pre.index_xxh3:
            raise StoreError(f"{what}: index checksum mismatch (corrupt index)")
        self.preamble = pre
        data_ends = [pre.index_offset]
        names = _shard_names_hint(text, pre.shard_count)
        for shard in range(1, pre.shard_count):
            path = self.directory / names[shard] if names else None
            if path is None:
                raise StoreError(f"{what}: index does not name shard {shard}")
            sfd, spre = self._open_file(path, shard)
            if (spre.shard_count, spre.alignment, spre.index_xxh3) != (
                pre.shard_count, pre.alignment, pre.index_xxh3,
            ):  # fmt: skip
                raise StoreError(f"{path}: belongs to another store (header does not match {self.primary.name})")
            data_ends.append(spre.file_size)
        index = parse_index(text, pre.alignment, data_ends, pre.minor)
        for i, s in enumerate(index.shards):
            expected = pre.file_size if i == 0 else data_ends[i]
            if s.size != expected:
                raise StoreError(f"{what}: index says shard {i} is {s.size} bytes, it is {expected}")
        return index

    # ------------------------------------------------------------ reading

    def read_piece(self, piece: Piece, what: str, check: bool = False) -> bytes:
        data = pread_exact(self.fds[piece.shard], piece.length, piece.offset, what)
        if check and xxh3(data) != piece.xxh3:
            raise ChecksumError(f"{what}: checksum mismatch (data damaged on disk)", [what])
        return data

    def tensor_bytes(self, tensor: Tensor, check: bool = False) -> bytes:
        """The tensor's raw bytes, decompressed if stored with zstd."""
        parts = [self.read_piece(p, _piece_name(tensor, i), check) for i, p in enumerate(tensor.pieces)]
        if tensor.encoding == "zstd":
            check_zstd_frame(parts[0], tensor)
            try:
                data = zstandard.ZstdDecompressor().decompress(parts[0], max_output_size=tensor.nbytes)
            except zstandard.ZstdError as e:
                raise StoreError(f"tensor {tensor.name!r}: cannot decompress: {e}") from None
            if len(data) != tensor.nbytes:
                raise StoreError(f"tensor {tensor.name!r}: decompressed to {len(data)} bytes, expected {tensor.nbytes}")
            return data
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_file(self, name: str, check: bool = True) -> bytes:
        if name not in self.index.files:
            raise StoreError(f"store has no embedded file {name!r}")
        return self.read_piece(self.index.files[name], f"file {name!r}", check)

    def extent_fd(self, extent: Extent) -> int:
        return self.fds[extent.shard]

    def path_of(self, shard: int) -> Path:
        return self.directory / self.index.shards[shard].name if shard else self.primary

    # ------------------------------------------------------------ verify

    def iter_checks(self) -> Iterator[tuple[str, int, bool]]:
        """Yield (what, bytes, ok) for every piece and embedded file, in file order."""
        items = [(p, f"file {n!r}") for n, p in self.index.files.items()]
        for t in self.index.tensors.values():
            items += [(p, _piece_name(t, i)) for i, p in enumerate(t.pieces)]
        items.sort(key=lambda x: (x[0].shard, x[0].offset))
        for piece, what in items:
            try:
                ok = xxh3(self.read_piece(piece, what)) == piece.xxh3
            except StoreError:
                ok = False
            yield what, piece.length, ok

    def verify(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Names of every damaged tensor piece or file (empty when all checksums match)."""
        bad = []
        for what, nbytes, ok in self.iter_checks():
            if not ok:
                bad.append(what)
            if progress:
                progress(nbytes)
        return bad

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fds", None):
            self.close()


def piece_file(index: Index, what: str) -> str | None:
    """The shard file holding the piece named `what` (as checks name pieces), or None."""
    for t in index.tensors.values():
        for i, p in enumerate(t.pieces):
            if _piece_name(t, i) == what:
                return index.shards[p.shard].name
    return None


def _piece_name(tensor: Tensor, i: int) -> str:
    if tensor.expert_group is not None:
        return f"tensor {tensor.name!r} expert {i}"
    return f"tensor {tensor.name!r}"


def check_zstd_frame(frame: bytes, tensor: Tensor) -> None:
    """Before allocating for a zstd tensor: its frame must state the tensor's exact size."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise StoreError(f"tensor {tensor.name!r}: not a zstd frame: {e}") from None
    if size != tensor.nbytes:
        said = "no size" if size < 0 else f"{size} bytes"
        raise StoreError(f"tensor {tensor.name!r}: zstd frame declares {said}, the tensor is {tensor.nbytes} bytes")


def _shard_names_hint(text: bytes, count: int) -> list[str] | None:
    """Shard file names, needed before the full parse to check shard headers first."""
    if count == 1:
        return [PRIMARY_NAME]
    shards = decode(text).get("shards")
    if not isinstance(shards, list) or len(shards) != count:
        raise StoreError(f"index: shards is not a list of {count} entries")
    names = []
    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            raise StoreError(f"index: shard {i} is not an object")
        names.append(check_file_name(s.get("name"), f"shard {i} name"))
    return names

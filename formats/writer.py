"""Writing a store: aligned, checksummed, sharded, and crash-safe (SPEC.md section 5).

Everything goes to a hidden directory beside the destination; `finish` writes the index and
the preambles last, fsyncs, and renames the directory into place. A writer that dies
early leaves only that hidden directory, which the next writer for the same destination
removes. Overwriting replaces only a store: an existing destination must be an empty
directory or a directory holding exactly one store's files (`check_replaceable`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import zstandard

from .errors import StoreError
from .index import ExpertGroup, Extent, Index, Piece, Shard, Tensor, parse_index
from .layout import (
    DEFAULT_ALIGNMENT,
    DTYPE_SIZES,
    PART_ALIGNMENT,
    Preamble,
    align_up,
    check_alignment,
    check_file_name,
    extent_length,
    shard_name,
    xxh3,
)

PARTIAL_TAG = ".mlxstore-partial-"
OLD_TAG = ".mlxstore-old-"  # a replaced store, deleted once the new one is in place
DEFAULT_MAX_SHARD_BYTES = 5 << 30
_ZEROS = bytes(1 << 16)


def partial_dirs(dst: Path) -> list[Path]:
    """Leftovers of interrupted writes to `dst` (unfinished new stores, replaced old ones)."""
    if not dst.parent.exists():
        return []
    return sorted(p for tag in (PARTIAL_TAG, OLD_TAG) for p in dst.parent.glob(f".{dst.name}{tag}*"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(dst: Path) -> None:
    """Clear leftovers whose writer process no longer runs.

    A writer that died between moving the old store aside and moving the new one in left
    the old store under `.NAME.mlxstore-old-PID` and no DST: it goes back to DST, never lost.
    """
    for d in partial_dirs(dst):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        if OLD_TAG in d.name and not dst.exists():
            os.rename(d, dst)
        elif d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        else:
            d.unlink(missing_ok=True)


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_replaceable(dst: Path, overwrite: bool) -> None:
    """Raise unless writing a store at `dst` can lose nothing but an old store.

    Fine: nothing there, or an empty directory. With `overwrite`: a directory that opens
    as one store and holds nothing else. Refused (naming what is there): a file, a link,
    a directory that is not a store (or a damaged one), and a store with other files in
    it, which are never deleted along with the store.
    """
    if not os.path.lexists(dst):
        return
    if dst.is_symlink():
        raise StoreError(f"{dst} is a symbolic link (to {os.readlink(dst)}); refusing to replace it")
    if not dst.is_dir():
        raise StoreError(f"{dst} is a file ({dst.stat().st_size} bytes), not an mlxstore store; "
                         "refusing to replace it")  # fmt: skip
    names = [p.name for p in dst.iterdir()]
    if not names:
        return
    if not overwrite:
        raise StoreError(f"{dst} already exists (pass overwrite to replace it)")
    from .reader import StoreReader

    try:
        with StoreReader(dst) as r:
            own = {s.name for s in r.index.shards}
    except StoreError as e:
        raise StoreError(f"{dst} is not an mlxstore store ({e}); it holds {_listing(names)}; "
                         "refusing to remove it") from None  # fmt: skip
    others = [n for n in names if n not in own]
    if others:
        raise StoreError(f"{dst} is a store but also holds {_listing(others)}, which is not part of it; "
                         "refusing to remove it (move those files out, or choose another destination)")  # fmt: skip


def _byte_view(data, what: str) -> memoryview:
    """`data` as flat bytes without copying; empty and 0-d buffers included."""
    view = memoryview(data)
    if view.nbytes == 0:
        return memoryview(b"")  # cast() refuses shapes with a zero in them
    if not view.c_contiguous:
        raise StoreError(f"{what}: data is not C-contiguous")
    return view.cast("B")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreWriter:
    """Appends tensors, expert groups and files to a new store; `finish` publishes it."""

    def __init__(
        self,
        dst: str | os.PathLike,
        *,
        alignment: int = DEFAULT_ALIGNMENT,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        overwrite: bool = False,
        progress: Callable[[int], None] | None = None,
    ):
        self.dst = Path(dst)
        self.alignment = check_alignment(alignment)
        if max_shard_bytes < self.alignment:
            raise StoreError(f"max shard size {max_shard_bytes} is smaller than the alignment {alignment}")
        self.max_shard_bytes = max_shard_bytes
        if not self.dst.parent.is_dir():
            raise StoreError(f"{self.dst.parent} is not a directory")
        remove_stale_partials(self.dst)
        check_replaceable(self.dst, overwrite)
        self.overwrite = overwrite
        self.tmp = self.dst.parent / f".{self.dst.name}{PARTIAL_TAG}{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.progress = progress
        self.index = Index(self.alignment, [], {})
        self._fds: list[int] = []
        self._pos = 0
        self._open_shard()

    # ------------------------------------------------------------ low level

    def _open_shard(self) -> None:
        shard = len(self._fds)
        path = self.tmp / shard_name(shard)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fds.append(os.open(path, flags, 0o644))
        self._write_zeros(self.alignment)  # preamble placeholder + padding
        self._pos = self.alignment

    def _write(self, view: memoryview) -> None:
        while view.nbytes:
            n = os.write(self._fds[-1], view)
            view = view[n:]
            if self.progress:
                self.progress(n)

    def _write_zeros(self, n: int) -> None:
        while n > 0:
            k = min(n, len(_ZEROS))
            os.write(self._fds[-1], _ZEROS[:k])
            n -= k

    def _start_item(self, nbytes: int) -> tuple[int, int]:
        """Position the next item on an aligned offset, in a new shard if it would not fit."""
        start = align_up(self._pos, self.alignment)
        if start + nbytes > self.max_shard_bytes and self._pos > self.alignment:
            self._open_shard()
            start = self._pos
        self._pad_to(start)
        return len(self._fds) - 1, start

    def _pad_to(self, offset: int) -> None:
        self._write_zeros(offset - self._pos)
        self._pos = offset

    def _put(self, view: memoryview) -> Piece:
        piece = Piece(len(self._fds) - 1, self._pos, view.nbytes, xxh3(view))
        self._write(view)
        self._pos += view.nbytes
        return piece

    # ------------------------------------------------------------ items

    def _check_new(self, name: str, dtype: str, shape: Sequence[int]) -> int:
        if name in self.index.tensors:
            raise StoreError(f"tensor {name!r} is written twice")
        if dtype not in DTYPE_SIZES:
            raise StoreError(f"tensor {name!r}: unsupported dtype {dtype!r}")
        n = DTYPE_SIZES[dtype]
        for d in shape:
            n *= int(d)
        return n

    def add_tensor(self, name: str, dtype: str, shape: Sequence[int], data, *, compress: bool = False) -> None:
        """One dense tensor: aligned, one piece, optionally zstd-compressed."""
        nbytes = self._check_new(name, dtype, shape)
        view = _byte_view(data, f"tensor {name!r}")
        if view.nbytes != nbytes:
            raise StoreError(f"tensor {name!r}: {view.nbytes} bytes given, shape {list(shape)} needs {nbytes}")
        encoding = "raw"
        if compress:
            view = memoryview(zstandard.ZstdCompressor(level=3).compress(view))
            encoding = "zstd"
            if "zstd" not in self.index.required_features:
                self.index.required_features.append("zstd")
        pieces: tuple[Piece, ...] = ()
        if view.nbytes:
            self._start_item(view.nbytes)
            pieces = (self._put(view),)
        self.index.tensors[name] = Tensor(name, dtype, tuple(int(d) for d in shape), encoding, pieces)

    def add_expert_group(
        self,
        prefix: str,
        tensors: Sequence[tuple[str, str, Sequence[int]]],
        experts: Iterable[Sequence],
    ) -> None:
        """Stacked expert tensors `(name, dtype, [E, ...])`, written expert-major.

        `experts` yields, for each expert in order, the bytes of that expert's slice of
        every tensor in `tensors` order. Each expert becomes one aligned extent.
        """
        if prefix in self.index.expert_groups:
            raise StoreError(f"expert group {prefix!r} is written twice")
        if not tensors:
            raise StoreError(f"expert group {prefix!r} has no tensors")
        num = int(tensors[0][2][0]) if tensors[0][2] else 0
        sizes = []
        for name, dtype, shape in tensors:
            nbytes = self._check_new(name, dtype, shape)
            if not shape or int(shape[0]) != num:
                raise StoreError(f"expert group {prefix!r}: {name!r} shape {list(shape)} is not stacked over {num} experts")
            sizes.append(nbytes // num if num else 0)
        extent_len = extent_length(sizes)
        pieces: list[list[Piece]] = [[] for _ in tensors]
        extents = []
        count = 0
        for parts in experts:
            if count >= num:
                raise StoreError(f"expert group {prefix!r}: more than {num} experts given")
            if len(parts) != len(tensors):
                raise StoreError(f"expert group {prefix!r} expert {count}: {len(parts)} parts for {len(tensors)} tensors")
            shard, start = self._start_item(extent_len)
            for i, part in enumerate(parts):
                view = _byte_view(part, f"{tensors[i][0]!r} expert {count}")
                if view.nbytes != sizes[i]:
                    raise StoreError(f"{tensors[i][0]!r} expert {count}: {view.nbytes} bytes, expected {sizes[i]}")
                self._pad_to(align_up(self._pos, PART_ALIGNMENT) if i else self._pos)
                pieces[i].append(self._put(view))
            extents.append(Extent(shard, start, self._pos - start))
            count += 1
        if count != num:
            raise StoreError(f"expert group {prefix!r}: {count} experts given, shape says {num}")
        for (name, dtype, shape), ps in zip(tensors, pieces):
            self.index.tensors[name] = Tensor(name, dtype, tuple(int(d) for d in shape), "raw", tuple(ps), prefix)
        self.index.expert_groups[prefix] = ExpertGroup(prefix, num, tuple(t[0] for t in tensors), tuple(extents))

    def add_file(self, name: str, data: bytes) -> None:
        """An embedded file (tokenizer, template...): stored whole, checksummed."""
        check_file_name(name, "embedded file")
        if name in self.index.files:
            raise StoreError(f"embedded file {name!r} is written twice")
        view = _byte_view(data, f"file {name!r}")
        self._start_item(view.nbytes)
        self.index.files[name] = self._put(view)

    # ------------------------------------------------------------ publish

    def finish(self) -> Path:
        """Write index and preambles, fsync, and rename the store into place."""
        # The index goes last in the primary file; shard sizes are known except the primary's.
        sizes = [os.fstat(fd).st_size for fd in self._fds]
        primary_data_end = max(sizes[0], self.alignment)
        text = b""
        while True:  # the primary's size is inside the index: iterate to a fixed point
            total = primary_data_end + len(text)
            self.index.shards = [Shard(shard_name(i), total if i == 0 else s) for i, s in enumerate(sizes)]
            new = self.index.to_json_bytes()
            done = len(new) == len(text)
            text = new
            if done:
                break
        try:  # never publish a store our own reader would refuse
            parse_index(text, self.alignment, [primary_data_end] + sizes[1:], self.index.minor)
        except StoreError as e:
            raise StoreError(f"{self.dst}: refusing to write an invalid index: {e}") from None
        digest = xxh3(text)
        os.pwrite(self._fds[0], text, primary_data_end)
        count = len(self._fds)
        for i, fd in enumerate(self._fds):
            size = primary_data_end + len(text) if i == 0 else sizes[i]
            pre = Preamble(i, count, self.alignment, primary_data_end if i == 0 else 0,
                           len(text) if i == 0 else 0, digest, size)  # fmt: skip
            os.fsync(fd)  # data before headers: a header never describes unwritten data
            os.pwrite(fd, pre.pack(), 0)
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        _fsync_dir(self.tmp)
        check_replaceable(self.dst, self.overwrite)  # again: the destination may have changed since
        old = None
        if self.dst.exists():
            old = self.dst.parent / f".{self.dst.name}{OLD_TAG}{os.getpid()}"
            os.rename(self.dst, old)
        os.rename(self.tmp, self.dst)
        _fsync_dir(self.dst.parent)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return self.dst

    def abort(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

"""Every platform-specific I/O call of mlxstore, in one place.

Linux and macOS give different tools for the same wishes (read this range soon, drop it
from the cache, read it without readahead, bypass the cache). Each wish is one function
here; where a platform has no such call the function does nothing and returns False, so
callers never branch on the platform. Hints are best-effort: a failing hint is ignored,
because a hint can only change speed, never results. Reads are not hints: they raise
StoreError naming the offset and length when the file cannot deliver the bytes.

The platform is looked up at call time (`sys.platform`), so tests can exercise the macOS
branches on Linux by substituting `sys.platform` and `fcntl.fcntl`.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from collections.abc import Sequence
from typing import Literal

from mlxstore.formats import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

# macOS <sys/fcntl.h>; Python's fcntl module does not export these.
F_RDADVISE = 44
F_RDAHEAD = 45
F_NOCACHE = 48
# struct radvisory { off_t ra_offset; int ra_count; }: 12 bytes (packed 4) or 16 (aligned);
# the kernel reads the first 12 either way.
_RADVISORY = struct.Struct("=qi4x")
_INT_MAX = (1 << 31) - 1
_READ_CHUNK = 1 << 30  # one syscall never asks for more (Linux caps reads near 2 GiB)

Advice = Literal["willneed", "dontneed", "random", "sequential", "normal"]


def _darwin() -> bool:
    return sys.platform == "darwin"


def page_size() -> int:
    """The VM page size: 16 KiB on Apple Silicon, 4 KiB on x86-64 Linux."""
    return mmap.PAGESIZE


def _fcntl(fd: int, cmd: int, arg) -> bool:
    if fcntl is None:
        return False
    try:
        fcntl.fcntl(fd, cmd, arg)
    except (OSError, ValueError):
        return False
    return True


def _fadvise(fd: int, offset: int, length: int, name: str) -> bool:
    advice = getattr(os, name, None)
    if advice is None or not hasattr(os, "posix_fadvise"):
        return False
    try:
        os.posix_fadvise(fd, offset, length, advice)
    except OSError:
        return False
    return True


WILLNEED_STEP = 128 << 10


def advise_willneed(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start reading [offset, offset+length) into the page cache now.

    Length 0 means "to the end of the file" on Linux (POSIX, one call: the kernel may read
    only its readahead window of it) and nothing on macOS. Linux caps each call at the
    larger of the device's readahead window and its largest request, so a longer range
    is asked for in `WILLNEED_STEP` pieces, a size under both on any device.
    """
    if length < 0:
        return False
    if _darwin():
        ok = True
        while length > 0:  # ra_count is an int: split ranges of 2 GiB and more
            count = min(length, _INT_MAX)
            ok = _fcntl(fd, F_RDADVISE, _RADVISORY.pack(offset, count)) and ok
            offset, length = offset + count, length - count
        return ok
    if length == 0:
        return _fadvise(fd, offset, 0, "POSIX_FADV_WILLNEED")
    ok = True
    end = offset + length
    while offset < end:  # Linux reads at most one readahead window per call: ask in steps
        step = min(end - offset, WILLNEED_STEP)
        ok = _fadvise(fd, offset, step, "POSIX_FADV_WILLNEED") and ok
        offset += step
    return ok


def advise_dontneed(fd: int, offset: int, length: int) -> bool:
    """Let the kernel drop the clean cached pages holding a range (Linux; macOS has no such call).

    Length 0 means "to the end of the file". Dirty and mapped-in-use pages stay. The range
    is widened to whole pages: Linux keeps a partly covered page, so an extent whose length
    is not a page multiple would otherwise leave its last page cached.
    """
    if length < 0 or _darwin():
        return False
    if length:
        length = -(-(offset + length) // page_size()) * page_size() - offset
    return _fadvise(fd, offset, length, "POSIX_FADV_DONTNEED")


def advise_random(fd: int) -> bool:
    """Turn readahead off for this descriptor: a read fetches what it asks for, no more.

    Why: with an 8 MB device readahead a 16 KiB read can pull in megabytes (RESEARCH.md).
    """
    if _darwin():
        return _fcntl(fd, F_RDAHEAD, 0)
    return _fadvise(fd, 0, 0, "POSIX_FADV_RANDOM")


def set_nocache(fd: int, on: bool) -> bool:
    """macOS: reads on this descriptor bypass the unified buffer cache. Elsewhere: no-op."""
    if not _darwin():
        return False
    return _fcntl(fd, F_NOCACHE, 1 if on else 0)


_MADVICE = {
    "willneed": "MADV_WILLNEED",
    "dontneed": "MADV_DONTNEED",
    "random": "MADV_RANDOM",
    "sequential": "MADV_SEQUENTIAL",
    "normal": "MADV_NORMAL",
}


def page_span(offset: int, length: int, limit: int) -> tuple[int, int]:
    """[offset, offset+length) widened to whole pages and clipped to `limit`: (start, length)."""
    page = page_size()
    start = offset // page * page
    end = min(-(-(offset + length) // page) * page, limit)
    return start, max(end - start, 0)


def madvise(mm: mmap.mmap, offset: int, length: int, advice: Advice) -> bool:
    """Advise on the pages covering a byte range of a mapping (rounded out to pages).

    Note: "dontneed" on a private (copy-on-write) mapping discards its private pages on
    Linux; only use it on shared read-only mappings.
    """
    if advice not in _MADVICE:
        raise ValueError(f"unknown madvise advice {advice!r} (one of {sorted(_MADVICE)})")
    flag = getattr(mmap, _MADVICE[advice], None)
    if flag is None or not hasattr(mm, "madvise") or mm.closed:
        return False
    start, span = page_span(offset, length, len(mm))
    if span <= 0:
        return False
    try:
        mm.madvise(flag, start, span)
    except (OSError, ValueError):
        return False
    return True


def _byte_views(buffers: Sequence) -> list[memoryview]:
    views = []
    for b in buffers:
        v = memoryview(b)
        if v.readonly:
            raise ValueError("read_extent_into needs writable buffers")
        if v.format != "B" or v.ndim != 1:
            v = v.cast("B")
        if v.nbytes:
            views.append(v)
    return views


def _preadv(fd: int, views: list[memoryview], offset: int) -> int:
    return os.preadv(fd, views, offset)


def _pread_copy(fd: int, views: list[memoryview], offset: int) -> int:
    """preadv for platforms without it: read into a temporary, then copy out."""
    want = min(sum(v.nbytes for v in views), _READ_CHUNK)
    data = os.pread(fd, want, offset)
    pos = 0
    for v in views:
        if pos >= len(data):
            break
        n = min(v.nbytes, len(data) - pos)
        v[:n] = data[pos : pos + n]
        pos += n
    return len(data)


def _iov_max() -> int:
    try:
        return max(1, min(os.sysconf("SC_IOV_MAX"), 1024))
    except (AttributeError, ValueError, OSError):
        return 16


def split_reads(offset: int, buffers: Sequence, parts: int, min_part: int) -> list[tuple[int, list[memoryview]]]:
    """One contiguous read of `buffers` from `offset` as up to `parts` reads of at least
    `min_part` bytes, each `(offset, views)`: run them in parallel to deepen the queue."""
    views = _byte_views(buffers)
    total = sum(v.nbytes for v in views)
    n = max(1, min(parts, total // max(1, min_part)))
    step = -(-total // n)
    out, current, size, pos = [], [], 0, offset
    for v in views:
        while v.nbytes:
            take = min(v.nbytes, step - size)
            current.append(v[:take])
            v, size = v[take:], size + take
            if size == step:
                out.append((pos, current))
                pos, current, size = pos + step, [], 0
    if current:
        out.append((pos, current))
    return out


def read_extent_into(fd: int, offset: int, buffers: Sequence, what: str = "store file") -> int:
    """Fill `buffers` in order from the contiguous file range starting at `offset`.

    One scatter read (preadv) per call where possible, looping over short reads. Raises
    StoreError naming offset and length when the file ends early or the read fails: a
    store file that shrank after open gives an error here, never garbage or SIGBUS.
    Returns the number of bytes read.
    """
    views = _byte_views(buffers)
    total = sum(v.nbytes for v in views)
    read = _preadv if hasattr(os, "preadv") else _pread_copy
    iov_max, done = _iov_max(), 0
    while views:
        batch, size = [], 0
        for v in views[:iov_max]:
            if size + v.nbytes > _READ_CHUNK and batch:
                break
            batch.append(v)
            size += v.nbytes
        try:
            n = read(fd, batch, offset + done)
        except OSError as e:
            raise StoreError(
                f"{what}: read of {total} bytes at offset {offset} failed after {done} bytes: {e}"
            ) from e
        if n <= 0:
            raise StoreError(
                f"{what}: short read, {done} of {total} bytes at offset {offset} (file truncated?)"
            )
        done += n
        while n and views:
            if n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
    return total

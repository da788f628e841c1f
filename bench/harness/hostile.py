"""Hostile stores: hypothesis strategies that break small valid stores in every way SPEC.md
forbids, each case paired with the words its error message must contain.

Why one module: the test suite draws a few thousand cases (tests/test_fuzz_store.py) and
`python -m bench fuzz` draws 100,000 from the same generator. A case starts from one of a
few valid stores (dense only, experts and zstd, sharded), changes one thing, and reseals
checksums and sizes where needed so the damage reaches the check it aims at rather than
stopping at a checksum. Every case is invalid by construction. hostile_run.py opens them.

Imports hypothesis: for tests and benchmarks, not for the library.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from mlxstore.formats import StoreWriter
from mlxstore.formats.layout import (
    MAX_INDEX_BYTES,
    PREAMBLE,
    PREAMBLE_SIZE,
    Preamble,
    parse_preamble,
    xxh3,
)

FIFO, DIRECTORY = "fifo", "directory"  # file contents the runner turns into special files
_MARK = "\x00mlxstore-raw\x00"  # a string no index holds: replaced by raw JSON text
_DUP = "\x00mlxstore-dup\x00"  # a key no index holds: renamed to duplicate another key


class Case:
    """The files of a store directory, and what its error must mention (any one of `expect`).

    A plain class, not a dataclass: hypothesis prints failing cases field by field, and
    the files are tens of kilobytes; `repr` shows their sizes instead.
    """

    def __init__(self, kind: str, files: dict[str, bytes | str], expect: tuple[str, ...], open_file: bool = False):
        self.kind = kind
        self.files = files
        self.expect = expect
        self.open_file = open_file  # open by the primary file's path instead of the directory

    def __repr__(self) -> str:
        sizes = {n: (v if isinstance(v, str) else len(v)) for n, v in self.files.items()}
        return f"Case({self.kind!r}, expect={self.expect!r}, files={sizes}, open_file={self.open_file})"


@dataclass(frozen=True)
class Base:
    """A valid store: its files, its primary's preamble and its index as JSON."""

    name: str
    files: dict[str, bytes]
    preamble: Preamble
    index: dict = field(repr=False)


def save_case(case: Case, directory: str | Path) -> Path:
    """Write a case to replay later with `load_case` (special files as NAME.special)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        if isinstance(content, str):
            (out / f"{name}.special").write_text(content)
        else:
            (out / name).write_bytes(content)
    meta = {"kind": case.kind, "expect": list(case.expect), "open_file": case.open_file}
    (out / "case.json").write_text(json.dumps(meta, indent=1))
    return out


def load_case(directory: str | Path) -> Case:
    d = Path(directory)
    meta = json.loads((d / "case.json").read_text())
    files: dict[str, bytes | str] = {}
    for p in sorted(d.iterdir()):
        if p.name.endswith(".special"):
            files[p.name[: -len(".special")]] = p.read_text()
        elif p.name != "case.json":
            files[p.name] = p.read_bytes()
    return Case(meta["kind"], files, tuple(meta["expect"]), meta["open_file"])


# ---------------------------------------------------------------- valid stores


def _bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _write_base(dst: Path, name: str) -> None:
    shard = 3 * 4096 if name == "sharded" else 1 << 30
    w = StoreWriter(dst, alignment=4096, max_shard_bytes=shard)
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2, "uint8": 1, "int64": 8, "uint32": 4, "int8": 1}

    def dense(tname: str, dtype: str, shape: list[int], compress: bool = False) -> None:
        n = int(np.prod(shape, dtype=np.int64)) * sizes[dtype]
        data = bytes(n) if compress else _bytes(n, len(tname))
        w.add_tensor(tname, dtype, shape, data, compress=compress)

    def group(prefix: str, specs: list[tuple[str, str, list[int]]]) -> None:
        full = [(f"{prefix}.{t}", d, s) for t, d, s in specs]
        rows = [int(np.prod(s[1:], dtype=np.int64)) * sizes[d] for _, d, s in specs]
        experts = [[_bytes(r, 100 * e + i) for i, r in enumerate(rows)] for e in range(specs[0][2][0])]
        w.add_expert_group(prefix, full, experts)

    if name == "dense":
        dense("embed.weight", "float32", [8, 16])
        dense("norm.weight", "bfloat16", [16])
        dense("scalar", "float32", [])
        dense("empty", "uint8", [0, 7])
        dense("ids", "int64", [2, 3])
        w.index.quantization = {"layers.0.mlp": {"group_size": 64, "bits": 4, "mode": "affine"}}
    elif name == "experts":
        dense("embed.weight", "float16", [4, 8])
        w.index.required_features.append("zstd")
        dense("packed", "float32", [32, 32], compress=True)
        group("layers.0.mlp.switch", [("gate.weight", "uint32", [3, 4, 2]),
                                      ("gate.scales", "float16", [3, 4]),
                                      ("down.weight", "uint32", [3, 2, 4])])  # fmt: skip
        group("layers.1.mlp.switch", [("w", "bfloat16", [2, 5])])
    else:
        dense("a", "float32", [64])
        group("g", [("x", "float16", [4, 100]), ("y", "uint8", [4, 10])])
        dense("b", "int8", [100])
    w.index.config = {"model_type": "llama", "hidden_size": 16, "nested": {"a": [1, 2, {"b": None}]}}
    w.index.metadata = {"source": "hostile", "note": name}
    w.add_file("tokenizer.json", b'{"version": "1.0", "model": {}}')
    w.add_file("chat_template.jinja", b"{{ messages }}")
    w.finish()


def base_of(path: str | Path, name: str = "store") -> Base:
    """Any store directory as a Base, to damage or rewrite like the built-in ones."""
    files = {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.name.endswith(".mlxs")}
    primary = files["model.mlxs"]
    pre = parse_preamble(primary[:PREAMBLE_SIZE], name)
    return Base(name, files, pre, json.loads(primary[pre.index_offset :]))


@functools.cache
def bases() -> tuple[Base, ...]:
    """The valid stores every case starts from (built once per process)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="mlxstore-hostile-") as tmp:
        for name in ("dense", "experts", "sharded"):
            _write_base(Path(tmp) / name, name)
            out.append(base_of(Path(tmp) / name, name))
    return tuple(out)


# ---------------------------------------------------------------- rebuilding files


def reseal(raw: bytes, **fields: int) -> bytes:
    """A file whose preamble has `fields` changed and a matching preamble checksum."""
    pre = parse_preamble(raw[:PREAMBLE_SIZE], "base")
    values = {**pre.__dict__, **fields}
    major = values.pop("major", 1)
    head = PREAMBLE.pack(b"MLXSTORE", major, values["minor"], values["shard"], values["shard_count"],
                         values["alignment"], values["index_offset"], values["index_length"],
                         values["index_xxh3"], values["file_size"], 0)[:56]  # fmt: skip
    return head + xxh3(head).to_bytes(8, "little") + raw[PREAMBLE_SIZE:]


def _render(obj: Any, raw: str | None = None, dup_key: str | None = None) -> bytes:
    """Index JSON text; `raw` replaces the _MARK value, `dup_key` renames the _DUP key."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if raw is not None:
        text = text.replace(json.dumps(_MARK), raw, 1)
    if dup_key is not None:
        text = text.replace(json.dumps(_DUP), json.dumps(dup_key, ensure_ascii=False), 1)
    return text.encode("utf-8")


def with_index(base: Base, obj: Any, fix_size: bool = True, **render) -> dict[str, bytes | str]:
    """The base's files with a new index, resealed; shards[0].size follows the file size."""
    data = base.files["model.mlxs"][: base.preamble.index_offset]
    text = _render(obj, **render)
    for _ in range(4):  # the size is inside the index: iterate to a fixed point
        size = len(data) + len(text)
        try:
            if not fix_size or obj["shards"][0]["size"] == size:
                break
            obj["shards"][0]["size"] = size
        except (KeyError, IndexError, TypeError):
            break
        text = _render(obj, **render)
    return with_text(base, text)


def with_text(base: Base, text: bytes) -> dict[str, bytes | str]:
    """The base's files with index bytes `text`; preambles resealed (shards carry its xxh3)."""
    primary = base.files["model.mlxs"][: base.preamble.index_offset] + text
    digest = xxh3(text)
    files: dict[str, bytes | str] = {n: reseal(raw, index_xxh3=digest) for n, raw in base.files.items()}
    files["model.mlxs"] = reseal(primary, index_length=len(text), index_xxh3=digest, file_size=len(primary))
    return files


# ---------------------------------------------------------------- where things are


def _paths(idx: dict) -> list[tuple[tuple, tuple[str, ...], str]]:
    """(path, names an error may use for it, kind) of every checked position of an index.

    kind: "int", "str", "list", "dict" (what the reader requires there).
    """
    out: list[tuple[tuple, tuple[str, ...], str]] = []

    def add(path: tuple, names: tuple[str, ...], kind: str) -> None:
        out.append((path, names, kind))

    for key, kind in (("format", "str"), ("version", "list"), ("alignment", "int"),
                      ("required_features", "list"), ("shards", "list"), ("config", "dict"),
                      ("quantization", "dict"), ("metadata", "dict"), ("files", "dict"),
                      ("tensors", "dict"), ("expert_groups", "dict")):  # fmt: skip
        if key in idx:
            add((key,), (key,), kind)
    add(("version", 0), ("version",), "int")
    add(("version", 1), ("version",), "int")
    for i in range(len(idx["required_features"])):
        add(("required_features", i), ("required_features",), "str")
    for i in range(len(idx["shards"])):
        add(("shards", i), (f"shard {i}",), "dict")
        add(("shards", i, "name"), (f"shard {i}",), "str")
        add(("shards", i, "size"), (f"shard {i}",), "int")
    for p in idx.get("quantization") or {}:
        add(("quantization", p), (p,), "dict")
        for key in ("group_size", "bits"):
            add(("quantization", p, key), (p,), "int")
        add(("quantization", p, "mode"), (p,), "str")
    for k in idx["metadata"]:
        add(("metadata", k), (k,), "str")

    def piece(path: tuple, names: tuple[str, ...], checksum: bool = True) -> None:
        add(path, names, "dict")
        for key in ("shard", "offset", "length"):
            add((*path, key), names, "int")
        if checksum:
            add((*path, "xxh3"), names, "str")

    for n in idx["files"]:
        piece(("files", n), (n,))
    for n, t in idx["tensors"].items():
        names = (n, t["expert_group"]) if "expert_group" in t else (n,)  # a group check may catch it
        add(("tensors", n), names, "dict")
        for key, kind in (("dtype", "str"), ("shape", "list"), ("encoding", "str"), ("pieces", "list")):
            add(("tensors", n, key), names, kind)
        if "expert_group" in t:
            add(("tensors", n, "expert_group"), names, "str")
        for j in range(len(t["shape"])):
            add(("tensors", n, "shape", j), names, "int")
        for k in range(len(t["pieces"])):
            piece(("tensors", n, "pieces", k), names)
    for p, g in idx["expert_groups"].items():
        add(("expert_groups", p), (p,), "dict")
        add(("expert_groups", p, "num_experts"), (p,), "int")
        add(("expert_groups", p, "tensors"), (p,), "list")
        add(("expert_groups", p, "extents"), (p,), "list")
        for j in range(len(g["tensors"])):
            add(("expert_groups", p, "tensors", j), (p,), "str")
        for e in range(len(g["extents"])):
            piece(("expert_groups", p, "extents", e), (p,), checksum=False)
    return out


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: tuple, value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def _delete(obj: Any, path: tuple) -> None:
    del _get(obj, path[:-1])[path[-1]]


def _pieces(idx: dict) -> list[tuple[tuple, str, dict]]:
    """(path, the name readers give it, piece) of every data piece: tensors and files."""
    out = []
    for n, t in idx["tensors"].items():
        for k, p in enumerate(t["pieces"]):
            what = f"tensor {n!r} expert {k}" if "expert_group" in t else f"tensor {n!r}"
            out.append((("tensors", n, "pieces", k), what, p))
    for n, p in idx["files"].items():
        out.append((("files", n), f"file {n!r}", p))
    return out


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value), "null")


def _fixes_size(path: tuple) -> bool:
    """Whether resealing may rewrite shards[0].size (not when the case is about it)."""
    return path[:1] != ("shards",) or (len(path) >= 2 and path[1] != 0)


# ---------------------------------------------------------------- strategies

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
_absurd_ints = (
    st.sampled_from([-1, -(2**63), 2**31, 2**32, 2**62, 2**63, 2**64, 2**64 - 1, 10**30])
    | st.integers(2**40, 2**80)
    | st.integers(max_value=-1)
)
_bad_names = st.sampled_from([
    "..", ".", "", "../model-00001.mlxs", "../model.mlxs", "/etc/passwd", "/tmp/model.mlxs",
    "sub/model.mlxs", "a\\b", "model.mlxs/", "x" * 256, "nul\x00.mlxs", "modèl.mlxs", " model.mlxs",
    "model.mlxs\n", "~/model.mlxs", "C:model.mlxs",
]) | st.text(min_size=1, max_size=12).filter(lambda s: any(c not in "._-" and not (c.isascii() and c.isalnum()) for c in s))  # fmt: skip
_bases = st.deferred(lambda: st.sampled_from(bases()))


@st.composite
def wrong_type(draw) -> Case:
    """A checked position holds a JSON value of another kind."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    path, names, kind = draw(st.sampled_from(_paths(idx)))
    value = draw(_json_values.filter(lambda v: _kind_of(v) != kind))
    _set(idx, path, value)
    return Case(f"index.wrong_type.{path[0]}", with_index(base, idx, _fixes_size(path)), names)


@st.composite
def missing_key(draw) -> Case:
    """A required key is absent."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    optional = {("config",), ("quantization",), ("metadata",), ("files",), ("expert_groups",)}
    paths = [(p, n) for p, n, _ in _paths(idx)
             if isinstance(p[-1], str) and p not in optional and p[:1] not in (("metadata",),)]  # fmt: skip
    paths = [(p, n) for p, n in paths if not (p[0] == "quantization" and len(p) == 2)]
    paths = [(p, n) for p, n in paths if not (p[0] == "files" and len(p) == 2)]
    paths = [(p, n) for p, n in paths if not (p[0] == "expert_groups" and len(p) == 2)]
    paths = [(p, n) for p, n in paths if not (p[0] == "tensors" and len(p) == 2)
             or _get(idx, p).get("expert_group") is not None]  # fmt: skip
    path, names = draw(st.sampled_from(paths))
    _delete(idx, path)
    if path[0] == "tensors" and len(path) == 2:  # a group member vanished
        names = (path[1], *names)
    return Case(f"index.missing.{path[0]}", with_index(base, idx, _fixes_size(path)), names)


@st.composite
def absurd_int(draw) -> Case:
    """An integer far out of range: negative, beyond 2^63, or larger than any file."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    path, names, _ = draw(st.sampled_from([x for x in _paths(idx) if x[2] == "int"]))
    _set(idx, path, draw(_absurd_ints))
    return Case(f"index.absurd_int.{path[0]}", with_index(base, idx, _fixes_size(path)), names)


@st.composite
def nudged_int(draw) -> Case:
    """An integer moved a little: misaligned, overlapping, one byte off, another shard."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    candidates = []
    for path, names, kind in _paths(idx):
        if kind != "int" or path[0] == "quantization":
            continue  # any group size or bit width parses; the model refuses wrong ones
        if path[0] == "tensors" and path[2] == "shape":
            if 0 in _get(idx, path[:3]) and _get(idx, path) != 0:
                continue  # other dimensions of an empty tensor may be anything
        if path[-1] == "xxh3":
            continue
        candidates.append((path, names))
    path, names = draw(st.sampled_from(candidates))
    old = _get(idx, path)
    delta = draw(st.sampled_from([-4096, -64, -1, 1, 64, 4096, 8192]).filter(lambda d: old + d >= 0))
    _set(idx, path, old + delta)
    names = tuple(names) + tuple(w for p, w, _ in _pieces(idx) if p == path[:-1])
    return Case(f"index.nudged.{path[0]}.{path[-1]}", with_index(base, idx, _fixes_size(path)), names)


@st.composite
def wrong_checksum(draw) -> Case:
    """A piece's recorded xxh3 differs from its bytes (read with checking on)."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    path, what, piece = draw(st.sampled_from([x for x in _pieces(idx) if x[2]["length"]]))
    old = int(piece["xxh3"], 16)
    piece["xxh3"] = f"{old ^ draw(st.integers(1, 2**64 - 1)):016x}"
    return Case("data.checksum", with_index(base, idx), (what,))


@st.composite
def flipped_data(draw) -> Case:
    """One byte of stored data changed on disk (read with checking on)."""
    base = draw(_bases)
    path, what, piece = draw(st.sampled_from([x for x in _pieces(base.index) if x[2]["length"]]))
    name = base.index["shards"][piece["shard"]]["name"]
    raw = bytearray(base.files[name])
    at = piece["offset"] + draw(st.integers(0, piece["length"] - 1))
    raw[at] ^= draw(st.integers(1, 255))
    return Case("data.flip", {**base.files, name: bytes(raw)}, (what,))


@st.composite
def bad_file_name(draw) -> Case:
    """A shard or embedded file named with a path, `..`, or characters outside the rule."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    bad = draw(_bad_names)
    if draw(st.booleans()) or len(idx["shards"]) == 1:
        i = draw(st.integers(0, len(idx["shards"]) - 1))
        idx["shards"][i]["name"] = bad
        return Case("index.name.shard", with_index(base, idx), ("not a plain file name",))
    name = draw(st.sampled_from(sorted(idx["files"])))
    idx["files"] = {(bad if k == name else k): v for k, v in idx["files"].items()}
    return Case("index.name.file", with_index(base, idx), ("not a plain file name",))


@st.composite
def wrong_shard_name(draw) -> Case:
    """A shard named after a missing file, another shard, or the primary."""
    base = draw(st.sampled_from([b for b in bases() if len(b.index["shards"]) > 1]))
    idx = copy.deepcopy(base.index)
    i = draw(st.integers(1, len(idx["shards"]) - 1))
    names = [s["name"] for s in idx["shards"]]
    new = draw(st.sampled_from(["model-09999.mlxs", "tokenizer.json", *[n for n in names if n != names[i]]]))
    idx["shards"][i]["name"] = new
    expect = (new, "expected shard", "same file name")
    return Case("index.name.wrong_shard", with_index(base, idx), expect)


@st.composite
def absurd_shape(draw) -> Case:
    """A shape too large, too deep, or whose byte size overflows 2^62 (no allocation may follow)."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    name = draw(st.sampled_from(sorted(idx["tensors"])))
    shape = draw(st.sampled_from([
        [2**31] * 3, [2**62], [2**61, 8], [2**20, 2**20, 2**10], [2**31 - 1] * 4, [1] * 65,
        [2] * 64, [3, 2**40], [0, 2**40], [0, 2**31], [2**30, 2**30],
    ]) | st.lists(st.integers(2**16, 2**40), min_size=2, max_size=6))  # fmt: skip
    idx["tensors"][name]["shape"] = shape
    return Case("index.absurd_shape", with_index(base, idx), (name,))


@st.composite
def bad_string(draw) -> Case:
    """An unknown dtype or encoding, or an expert group reference that does not resolve."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    name = draw(st.sampled_from(sorted(idx["tensors"])))
    t = idx["tensors"][name]
    key = draw(st.sampled_from(["dtype", "encoding", "expert_group"]))
    if key == "dtype":
        t[key] = draw(st.sampled_from(["float8", "int128", "FLOAT32", "", "float", "object", "complex128"]))
    elif key == "encoding":
        t[key] = draw(st.sampled_from(["gzip", "", "RAW", "lz4", "zstd" if t["encoding"] == "raw" else "raw"]))
    else:
        t[key] = draw(st.sampled_from(["nowhere", "", *(p for p in idx["expert_groups"] if p != t.get(key))]))
    return Case(f"index.string.{key}", with_index(base, idx), (name,))


@st.composite
def overlap(draw) -> Case:
    """Two data items share bytes, a piece leaves its extent, or an extent leaves its parts."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    how = draw(st.sampled_from(["piece", "extent"] if idx["expert_groups"] else ["piece"]))
    if how == "extent":
        prefix = draw(st.sampled_from(sorted(idx["expert_groups"])))
        extents = idx["expert_groups"][prefix]["extents"]
        e = draw(st.integers(1, len(extents) - 1))
        extents[e] = dict(extents[e - 1])
        return Case("index.overlap.extent", with_index(base, idx), (prefix,))
    pieces = [x for x in _pieces(idx) if x[2]["length"]]
    (pa, wa, a), (pb, wb, b) = draw(st.permutations(pieces).map(lambda ps: ps[:2]))
    moves = [d for d in (0, 0, 1, 64, b["length"] - 1) if (b["shard"], b["offset"] + d) != (a["shard"], a["offset"])]
    a["shard"], a["offset"] = b["shard"], b["offset"] + draw(st.sampled_from(moves))  # never where it is
    names = tuple({wa.split("'")[1], wb.split("'")[1]})
    names += tuple(g for g, v in idx["expert_groups"].items() if set(names) & set(v["tensors"]))
    return Case("index.overlap.piece", with_index(base, idx), names)


@st.composite
def duplicate(draw) -> Case:
    """A key twice in one JSON object, a shard name twice, a tensor listed twice by its group."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    how = draw(st.sampled_from(["key", "group"] if idx["expert_groups"] else ["key"]))
    if how == "group":
        prefix = draw(st.sampled_from(sorted(idx["expert_groups"])))
        members = idx["expert_groups"][prefix]["tensors"]
        members.insert(draw(st.integers(0, len(members))), draw(st.sampled_from(members)))
        return Case("index.duplicate.member", with_index(base, idx), (prefix,))
    objects = [p for p, _, kind in _paths(idx) if kind == "dict" and _get(idx, p)]
    objects.append(())
    path = draw(st.sampled_from(objects))
    node = _get(idx, path)
    key = draw(st.sampled_from(sorted(node)))
    node[_DUP] = copy.deepcopy(node[key]) if draw(st.booleans()) else draw(_json_values)
    return Case("index.duplicate.key", with_index(base, idx, _fixes_size(path), dup_key=key),
                (f"duplicate key {key!r}",))  # fmt: skip


@st.composite
def features(draw) -> Case:
    """Required features this reader does not know (and zstd missing where it is used)."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    if "zstd" in idx["required_features"] and draw(st.booleans()):
        idx["required_features"].remove("zstd")
        return Case("index.features.zstd_missing", with_index(base, idx), ("zstd",))
    unknown = draw(st.sampled_from(["encryption", "zstd2", "", "ZSTD", "lz4"]) | st.text(max_size=10))
    unknown = unknown if unknown != "zstd" else "zstd-long"
    idx["required_features"].insert(draw(st.integers(0, len(idx["required_features"]))), unknown)
    return Case("index.features.unknown", with_index(base, idx), (repr(unknown),))


@st.composite
def deep_nesting(draw) -> Case:
    """Arrays or objects nested thousands deep where any value may stand."""
    base = draw(_bases)
    idx = copy.deepcopy(base.index)
    depth = draw(st.integers(64, 200_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    raw = opener * depth + "0" + closer * depth
    if draw(st.booleans()):
        raw = opener * (depth + 1) + "0" + closer * (depth + 1)
        return Case("index.deep.top", with_text(base, raw.encode()), ("nested too deeply",))
    where = draw(st.sampled_from([("config",), ("metadata", "source"), ("tensors",), ("shards",),
                                  ("expert_groups",), ("files", "tokenizer.json", "shard")]))  # fmt: skip
    _set(idx, where, _MARK)
    return Case("index.deep.value", with_index(base, idx, raw=raw), ("nested too deeply",))


@st.composite
def bad_text(draw) -> Case:
    """Index bytes that are not one strict UTF-8 JSON object (checksums valid)."""
    base = draw(_bases)
    text = _render(base.index)
    how = draw(st.sampled_from(["cut", "utf8", "nan", "bom", "trailing", "top", "bigint", "control"]))
    expect = ("not valid JSON",)
    if how == "cut":
        text = text[: draw(st.integers(0, len(text) - 1))]
        expect = ("not valid JSON", "not valid UTF-8", "index length 0")  # a cut may split a character
    elif how == "utf8":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88\x80\x80\x80"])) + text[at:]
        expect = ("not valid UTF-8",)
    elif how in ("nan", "bigint"):
        idx = copy.deepcopy(base.index)
        path = draw(st.sampled_from([p for p, _, k in _paths(idx) if k == "int"]))
        _set(idx, path, _MARK)
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])) if how == "nan" else "9" * draw(st.integers(4301, 20000))
        return Case(f"index.text.{how}", with_index(base, idx, _fixes_size(path), raw=literal), expect)
    elif how == "bom":
        text = b"\xef\xbb\xbf" + text
    elif how == "trailing":
        text += draw(st.sampled_from([b"x", b"{}", b"\x00", b",", b"]"]))
    elif how == "control":
        text = text.replace(b'"hostile"', b'"host\x01ile"', 1)
    else:
        text = draw(st.sampled_from([b"[]", b"1", b'"mlxstore"', b"null", b"true", b"[{}]", b"   "]))
        expect = ("not a JSON object", "not valid JSON")
    return Case(f"index.text.{how}", with_text(base, text), expect)


_PREAMBLE_FIELDS = ("major", "minor", "alignment", "shard", "shard_count", "file_size",
                    "index_offset", "index_length", "index_xxh3")  # fmt: skip


@st.composite
def preamble(draw) -> Case:
    """A damaged preamble: too short, wrong magic, bad checksum, or a resealed bad field."""
    base = draw(_bases)
    name = draw(st.sampled_from(sorted(base.files)))
    if not name.endswith(".mlxs"):
        name = "model.mlxs"
    raw = base.files[name]
    primary = name == "model.mlxs"
    how = draw(st.sampled_from(["short", "magic", "flip", "field", "field", "field"]))
    if how == "short":
        return Case("preamble.short", {**base.files, name: raw[: draw(st.integers(0, 63))]}, ("too short",))
    if how == "magic":
        magic = draw(st.binary(min_size=8, max_size=8).filter(lambda m: m != b"MLXSTORE"))
        return Case("preamble.magic", {**base.files, name: magic + raw[8:]}, ("wrong magic",))
    if how == "flip":
        at = draw(st.integers(8, 63))
        damaged = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
        return Case("preamble.flip", {**base.files, name: damaged}, ("preamble checksum mismatch",))
    pre = parse_preamble(raw[:PREAMBLE_SIZE], name)
    fields = _PREAMBLE_FIELDS if primary else ("major", "alignment", "shard", "shard_count", "file_size", "index_xxh3")
    key = draw(st.sampled_from(fields))
    count = pre.shard_count
    choices = {
        "major": (st.integers(0, 65535).filter(lambda v: v != 1), ("format version",)),
        "minor": (st.integers(1, 65535), ("version",)),
        "alignment": (st.integers(0, 2**32 - 1).filter(lambda v: v != pre.alignment)
                      | st.sampled_from([0, 1, 2048, 8192, 4097, 2**31, 2**32 - 1]).filter(lambda v: v != pre.alignment),
                      ("alignment", "another store")),
        "shard": (st.integers(0, 2**32 - 1).filter(lambda v: v != pre.shard), ("expected shard", "out of range")),
        "shard_count": (st.integers(0, 2**32 - 1).filter(lambda v: v != count),
                        ("out of range", "another store", "shards", "shard")),
        "file_size": (st.integers(0, 2**64 - 1).filter(lambda v: v != len(raw)), ("truncated or extended",)),
        "index_offset": (st.integers(0, 2**64 - 1).filter(lambda v: v != pre.index_offset), ("does not end the file",)),
        "index_length": (st.sampled_from([0, MAX_INDEX_BYTES + 1, 2**60, 2**64 - 1]) | st.integers(MAX_INDEX_BYTES + 1, 2**64 - 1),
                         ("index length",)),
        "index_xxh3": (st.integers(0, 2**64 - 1).filter(lambda v: v != pre.index_xxh3),
                       ("index checksum mismatch", "another store")),
    }  # fmt: skip
    values, expect = choices[key]
    value = draw(values)
    if key == "index_length" and draw(st.booleans()):  # in range, but not where the index is
        value = draw(st.integers(1, MAX_INDEX_BYTES).filter(lambda v: v != pre.index_length))
        expect = ("does not end the file",)
    return Case(f"preamble.field.{key}", {**base.files, name: reseal(raw, **{key: value})}, expect)


@st.composite
def file_size(draw) -> Case:
    """A store file cut short or grown on disk."""
    base = draw(_bases)
    name = draw(st.sampled_from(sorted(base.files)))
    raw = base.files[name]
    if draw(st.booleans()):
        new = raw[: draw(st.integers(PREAMBLE_SIZE, len(raw) - 1))]
    else:
        new = raw + draw(st.binary(min_size=1, max_size=64)) * draw(st.integers(1, 100))
    return Case("file.truncated" if len(new) < len(raw) else "file.extended", {**base.files, name: new},
                ("truncated or extended",))  # fmt: skip


@st.composite
def file_set(draw) -> Case:
    """Store files missing, swapped, duplicated, or not regular files (a FIFO must not hang)."""
    base = draw(_bases)
    files = dict(base.files)
    shards = sorted(n for n in files if n.startswith("model-"))
    hows = ["special", "missing_primary"] + (["missing", "swap", "copy"] if shards else [])
    how = draw(st.sampled_from(hows))
    if how == "special":
        name = draw(st.sampled_from(["model.mlxs", *shards]))
        files[name] = draw(st.sampled_from([FIFO, DIRECTORY]))
        return Case("files.special", files, ("not a regular file",), draw(st.booleans()) and name != "model.mlxs")
    if how == "missing_primary":
        del files["model.mlxs"]
        return Case("files.missing_primary", files, ("no such store", "cannot open"))
    if how == "missing":
        name = draw(st.sampled_from(shards))
        del files[name]
        return Case("files.missing_shard", files, (name,))
    a, b = draw(st.permutations(shards + ["model.mlxs"]).map(lambda x: x[:2]))
    if how == "swap":
        files[a], files[b] = files[b], files[a]
    else:
        files[a] = files[b]
    return Case(f"files.{how}", files, ("expected shard", "index says shard", "truncated or extended"))


@st.composite
def unsealed(draw) -> Case:
    """Index bytes changed without updating the preamble's index checksum."""
    base = draw(_bases)
    raw = bytearray(base.files["model.mlxs"])
    at = base.preamble.index_offset + draw(st.integers(0, base.preamble.index_length - 1))
    raw[at] ^= draw(st.integers(1, 255))
    return Case("index.unsealed", {**base.files, "model.mlxs": bytes(raw)}, ("index checksum mismatch",))


FAMILIES = (wrong_type, missing_key, absurd_int, nudged_int, wrong_checksum, flipped_data, bad_file_name,
            wrong_shard_name, absurd_shape, bad_string, overlap, duplicate, features, deep_nesting,
            bad_text, preamble, file_size, file_set, unsealed)  # fmt: skip


def cases() -> st.SearchStrategy[Case]:
    """Any hostile case, every family equally likely."""
    return st.one_of(*(family() for family in FAMILIES))

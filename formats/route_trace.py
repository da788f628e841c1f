"""Reader and writer of routing-trace CSVs (expert choices recorded from real MoE generation).

Why: cache policies and the I/O path are judged on replayed real routing, not on
synthetic routers. The format (see mlxstore/data/traces/README.md) is a '#' preamble:

    # route_trace v1
    # model=PATH arch=NAME n_layer=48 n_expert=128 n_expert_used=6
    # layer=0 expert_bytes=3059712 dense_bytes=11953152

then a CSV header ``turn,phase,step,layer,slot,expert,weight,residency,expert_bytes``
and one row per (token, layer, rank) in execution order. A file whose name ends in
``.zst`` is read through zstd (the bundled traces are stored so).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PROMPT = 0
GENERATION = 1

REQUIRED_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert")
_INT_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "residency", "expert_bytes")


@dataclass(frozen=True)
class TraceStep:
    """One token position: per-layer expert ids (rank order) and router weights.

    ``experts[layer]`` is empty where the trace has no rows for that layer at this step
    (llama.cpp skips the last layer for prompt tokens whose logits are not needed).
    """

    turn: int
    phase: int
    step: int
    experts: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class RouteTrace:
    """A parsed trace; ``steps`` are in order of first appearance (execution order)."""

    model: str
    arch: str
    n_layer: int
    n_expert: int
    top_k: int
    expert_bytes: tuple[int, ...]
    dense_bytes: tuple[int, ...]
    steps: tuple[TraceStep, ...]

    def phase_steps(self, phase: int) -> list[TraceStep]:
        return [s for s in self.steps if s.phase == phase]

    def generation_steps(self) -> list[TraceStep]:
        return self.phase_steps(GENERATION)

    def prompt_steps(self) -> list[TraceStep]:
        return self.phase_steps(PROMPT)

    def layer_calls(
        self, layer: int, phases: Iterable[int] = (PROMPT, GENERATION)
    ) -> list[tuple[int, ...]]:
        """Expert ids one layer's cache sees, one tuple per token, in execution order.

        Why per layer: each MoE layer has its own slot bank, so only the order of
        calls within a layer matters to a per-layer cache.
        """
        if not 0 <= layer < self.n_layer:
            raise ValueError(f"layer {layer} out of range [0, {self.n_layer})")
        wanted = set(phases)
        return [s.experts[layer] for s in self.steps if s.phase in wanted and s.experts[layer]]

    def generation_calls(self, layer: int) -> list[tuple[int, ...]]:
        return self.layer_calls(layer, (GENERATION,))

    def num_accesses(self, phases: Iterable[int] = (PROMPT, GENERATION)) -> int:
        wanted = set(phases)
        return sum(len(e) for s in self.steps if s.phase in wanted for e in s.experts)


def _fail(lineno: int, problem: str) -> ValueError:
    return ValueError(f"route trace line {lineno}: {problem}")


def _parse_kv(text: str, lineno: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in text.split():
        key, sep, value = tok.partition("=")
        if sep and key:
            out[key] = value
    return out


def _int(value: str, what: str, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise _fail(lineno, f"{what} is not an integer: {value!r}") from None


class _Builder:
    """Accumulates rows into steps, validating as it goes."""

    def __init__(self, n_layer: int, n_expert: int, top_k: int) -> None:
        self.n_layer, self.n_expert, self.top_k = n_layer, n_expert, top_k
        self.order: list[tuple[int, int, int]] = []
        self.experts: dict[tuple[int, int, int], list[list[int]]] = {}
        self.weights: dict[tuple[int, int, int], list[list[float]]] = {}

    def add(self, key: tuple[int, int, int], layer: int, slot: int, expert: int,
            weight: float, lineno: int) -> None:
        if not 0 <= layer < self.n_layer:
            raise _fail(lineno, f"layer {layer} out of range [0, {self.n_layer})")
        if not 0 <= expert < self.n_expert:
            raise _fail(lineno, f"expert {expert} out of range [0, {self.n_expert})")
        if not 0 <= slot < self.top_k:
            raise _fail(lineno, f"slot {slot} out of range [0, {self.top_k}) (n_expert_used)")
        per_layer = self.experts.get(key)
        if per_layer is None:
            per_layer = [[] for _ in range(self.n_layer)]
            self.experts[key] = per_layer
            self.weights[key] = [[] for _ in range(self.n_layer)]
            self.order.append(key)
        ids = per_layer[layer]
        if slot != len(ids):
            raise _fail(
                lineno,
                f"slot {slot} out of order for turn/phase/step {key} layer {layer} "
                f"(expected slot {len(ids)})",
            )
        if expert in ids:
            raise _fail(lineno, f"expert {expert} repeated at turn/phase/step {key} layer {layer}")
        ids.append(expert)
        self.weights[key][layer].append(weight)

    def steps(self) -> tuple[TraceStep, ...]:
        return tuple(
            TraceStep(
                turn=k[0], phase=k[1], step=k[2],
                experts=tuple(tuple(x) for x in self.experts[k]),
                weights=tuple(tuple(x) for x in self.weights[k]),
            )
            for k in self.order
        )


def parse_route_trace(lines: Iterable[str]) -> RouteTrace:
    """Parse trace text lines (with or without newlines); ValueError names the bad line."""
    meta: dict[str, str] = {}
    layer_meta: dict[int, tuple[int, int]] = {}
    columns: dict[str, int] | None = None
    builder: _Builder | None = None
    row_bytes: dict[int, int] = {}  # largest per-row read size, when the preamble lacks a layer
    lineno = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if columns is not None:
                continue  # comments after the header carry no metadata
            kv = _parse_kv(line[1:], lineno)
            if "layer" in kv:
                layer = _int(kv["layer"], "layer", lineno)
                if layer in layer_meta:
                    raise _fail(lineno, f"layer {layer} described twice in the preamble")
                layer_meta[layer] = (
                    _int(kv.get("expert_bytes", "0"), "expert_bytes", lineno),
                    _int(kv.get("dense_bytes", "0"), "dense_bytes", lineno),
                )
            else:
                meta.update(kv)
            continue
        if columns is None:
            names = [c.strip() for c in line.split(",")]
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise _fail(lineno, f"expected CSV header with columns {REQUIRED_COLUMNS}, "
                                    f"missing {missing} in {line!r}")
            columns = {n: i for i, n in enumerate(names)}
            builder = _start(meta, layer_meta, lineno)
            continue
        assert builder is not None
        fields = line.split(",")
        if len(fields) != len(columns):
            raise _fail(lineno, f"expected {len(columns)} fields, got {len(fields)}")
        vals = {
            c: _int(fields[columns[c]], c, lineno) for c in _INT_COLUMNS if c in columns
        }
        weight = 0.0
        if "weight" in columns:
            try:
                weight = float(fields[columns["weight"]])
            except ValueError:
                raise _fail(lineno, f"weight is not a number: {fields[columns['weight']]!r}") from None
        if vals["phase"] not in (PROMPT, GENERATION):
            raise _fail(lineno, f"phase must be 0 (prompt) or 1 (generation), got {vals['phase']}")
        layer = vals["layer"]
        builder.add((vals["turn"], vals["phase"], vals["step"]), layer, vals["slot"],
                    vals["expert"], weight, lineno)
        if vals.get("expert_bytes", 0) < 0:
            raise _fail(lineno, f"negative expert_bytes {vals['expert_bytes']}")
        if vals.get("expert_bytes", 0) > row_bytes.get(layer, 0):
            row_bytes[layer] = vals["expert_bytes"]
    if builder is None:
        raise _fail(lineno, "no CSV header found (file empty or preamble only)")
    steps = builder.steps()
    if not steps:
        raise _fail(lineno, "trace has a header but no rows")
    n_layer = builder.n_layer
    expert_bytes, dense_bytes = [], []
    for layer in range(n_layer):
        # Row expert_bytes is what the recording engine read (0 when it had the expert
        # cached), so the preamble is the authority and rows are only a fallback.
        eb, db = layer_meta.get(layer, (row_bytes.get(layer, 0), 0))
        expert_bytes.append(eb)
        dense_bytes.append(db)
    return RouteTrace(
        model=meta.get("model", ""),
        arch=meta.get("arch", ""),
        n_layer=n_layer,
        n_expert=builder.n_expert,
        top_k=builder.top_k,
        expert_bytes=tuple(expert_bytes),
        dense_bytes=tuple(dense_bytes),
        steps=steps,
    )


def _start(meta: dict[str, str], layer_meta: dict[int, tuple[int, int]], lineno: int) -> _Builder:
    for key in ("n_layer", "n_expert", "n_expert_used"):
        if key not in meta:
            raise _fail(lineno, f"preamble lacks '{key}=' before the CSV header")
    n_layer = _int(meta["n_layer"], "n_layer", lineno)
    n_expert = _int(meta["n_expert"], "n_expert", lineno)
    top_k = _int(meta["n_expert_used"], "n_expert_used", lineno)
    if n_layer <= 0 or n_expert <= 0 or not 0 < top_k <= n_expert:
        raise _fail(lineno, f"bad preamble sizes n_layer={n_layer} n_expert={n_expert} "
                            f"n_expert_used={top_k}")
    bad = [layer for layer in layer_meta if not 0 <= layer < n_layer]
    if bad:
        raise _fail(lineno, f"preamble describes layers {bad} outside [0, {n_layer})")
    return _Builder(n_layer, n_expert, top_k)


def _lines(path: str | os.PathLike[str]) -> Iterator[str]:
    if os.fspath(path).endswith(".zst"):
        import io

        import zstandard

        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as z:
            try:
                yield from io.TextIOWrapper(z, encoding="utf-8")
            except zstandard.ZstdError as e:
                raise ValueError(f"cannot read the trace: {e}") from None
        return
    with open(path, encoding="utf-8") as f:
        yield from f


def load_route_trace(path: str | os.PathLike[str]) -> RouteTrace:
    """Read a trace file; errors carry the file name and line number."""
    try:
        return parse_route_trace(_lines(path))
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None
    except OSError as e:
        raise ValueError(f"{os.fspath(path)}: cannot read the trace: {e.strerror or e}") from None


HEADER = "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes"


def format_preamble(*, model: str, arch: str, n_layer: int, n_expert: int, top_k: int,
                    expert_bytes: Iterable[int] = (), dense_bytes: Iterable[int] = ()) -> str:  # fmt: skip
    """The '#' preamble and CSV header of a trace, newline-terminated."""
    lines = ["# route_trace v1",
             f"# model={_token(model)} arch={_token(arch)} n_layer={n_layer} n_expert={n_expert} "
             f"n_expert_used={top_k}"]  # fmt: skip
    for layer, (eb, db) in enumerate(zip(expert_bytes, dense_bytes)):
        lines.append(f"# layer={layer} expert_bytes={eb} dense_bytes={db}")
    return "\n".join(lines + [HEADER]) + "\n"


def format_rows(turn: int, phase: int, step: int, layer: int, experts: Iterable[int],
                weights: Iterable[float] | None = None) -> str:  # fmt: skip
    """One token's rows for one layer (rank order), newline-terminated; weights default to 0."""
    ids = list(experts)
    ws = list(weights) if weights is not None else [0.0] * len(ids)
    return "".join(f"{turn},{phase},{step},{layer},{slot},{e},{w:.6g},0,0\n"
                   for slot, (e, w) in enumerate(zip(ids, ws)))  # fmt: skip


def _token(text: str) -> str:
    """A preamble value without the spaces that separate key=value pairs."""
    return "".join("_" if c.isspace() else c for c in text) or "-"

"""Recording routing from a live run, in the route-trace format (`formats.route_trace`).

Why: the advisor (`moe.advisor`, `mlxstore plan --trace`) predicts what a budget buys
from real routing; the user's own prompts on the user's own model are the best trace.
Every MoE layer's switch module (streamed or resident) is wrapped by `RecordedExperts`,
which reads the router's expert ids to the host and hands them on unchanged. The read
is a host sync per layer, paid only while recording (a streamed layer makes that sync
anyway; a layer that holds every expert otherwise makes none). Nothing is installed,
and nothing is paid, when recording is off.

Rows: MoE layer n of the model is trace layer n; each token position a layer sees is
one step (the same step in every layer, counted from the start of the recording, so
steps stay distinct across requests); `slot` is the id's position in the router's
output (mlx-lm's top-k order, not sorted by weight) and weights are not recorded (0). A
call of several tokens is a prompt row (phase 0), a call of one token a generation row
(phase 1): mlx-lm computes a prompt's last token in the first one-token call, so that
token is recorded as generation. `turn` counts `new_turn()` calls (one per request).
Rows go to the file as they are seen, so a run that is stopped keeps what it recorded.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlxstore.formats.route_trace import GENERATION, PROMPT, format_preamble, format_rows
from mlxstore.switches import find_switches

from .plain import set_plain
from .replay import _num_experts, _switch_sites
from .streaming import StreamingExperts, optimism_of
from .wrapper import Wrapper


class TraceRecorder:
    """Writes rows of a route trace to `path`; one per model, shared by its layers."""

    def __init__(self, path: str | os.PathLike, *, num_experts: int, expert_bytes: list[int],
                 top_k: int | None, model: str = "", arch: str = ""):  # fmt: skip
        self.path = Path(path)
        self.num_layers = len(expert_bytes)
        self.num_experts = num_experts
        self.top_k = top_k
        self.expert_bytes = expert_bytes
        self.model, self.arch = model, arch
        self.turn = 0
        self.cursor = [0] * self.num_layers  # token positions each layer has seen
        self._lock = threading.Lock()
        # line-buffered: each call's rows reach the file at once, so a killed run keeps them
        self._file = open(self.path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed by close())
        self._started = False

    def _start(self, k: int) -> None:
        top_k = max(self.top_k or 0, k)
        self._file.write(format_preamble(model=self.model, arch=self.arch, n_layer=self.num_layers,
                                         n_expert=self.num_experts, top_k=top_k,
                                         expert_bytes=self.expert_bytes,
                                         dense_bytes=[0] * self.num_layers))  # fmt: skip
        self.top_k = top_k
        self._started = True

    def add(self, layer: int, ids: np.ndarray, tokens_per_sequence: int) -> None:
        """One call of MoE layer `layer`: `ids` is [tokens, k] in the router's order."""
        phase = PROMPT if tokens_per_sequence > 1 else GENERATION
        with self._lock:
            if self._file.closed:
                return
            if not self._started:
                self._start(ids.shape[-1])
            start = self.cursor[layer]
            self._file.write("".join(
                format_rows(self.turn, phase, start + t, layer, row.tolist()) for t, row in enumerate(ids)
            ))  # fmt: skip
            self.cursor[layer] = start + len(ids)

    def new_turn(self) -> None:
        """Start the next request's rows (their steps keep counting on)."""
        with self._lock:
            if any(self.cursor):
                self.turn += 1

    @property
    def tokens(self) -> int:
        """Token positions recorded (by the layer that saw the most)."""
        return max(self.cursor, default=0)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


class RecordedExperts(Wrapper):
    """Wraps a switch module (or StreamingExperts): records the ids it is given, passes them on."""

    def __init__(self, inner: nn.Module, recorder: TraceRecorder, layer: int):
        super().__init__(inner)
        set_plain(self, "recorder", recorder)
        set_plain(self, "layer", layer)

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        k = indices.shape[-1]
        per_sequence = indices.shape[-2] if indices.ndim >= 2 else 1
        optimism = optimism_of(self.inner)
        if optimism is not None:  # recorded once the step stands (a step run again records once)
            optimism.on_confirm(lambda: self.recorder.add(self.layer, np.array(indices).reshape(-1, k), per_sequence))
        else:
            self.recorder.add(self.layer, np.array(indices).reshape(-1, k), per_sequence)  # the host sync recording costs
        return self.inner(x, indices)


def _expert_bytes(module: nn.Module, num_experts: int) -> int:
    if isinstance(module, StreamingExperts):
        return sum(t.nbytes // t.shape[0] for t in module.bank.tensors)
    return sum(v.nbytes for _, v in tree_flatten(module.parameters())) // num_experts


def record(model: nn.Module, path: str | os.PathLike, *, name: str = "", top_k: int | None = None) -> TraceRecorder:
    """Record every MoE layer's expert ids of `model` to the trace file `path` from now on.

    name: the model's name in the preamble. top_k: experts per token when known (else
    taken from the first call). Call `stop(model)` (or the recorder's `close`) at the end.
    """
    if recorder_of(model) is not None:
        raise ValueError("the model already records a trace; call stop(model) first")
    sites = _switch_sites(model)
    if not sites:
        raise ValueError("the model has no MoE switch modules to record")
    check_target(Path(path))
    counts = [_num_experts(site.module) for site in sites]
    arch = str(getattr(getattr(model, "args", None), "model_type", "") or getattr(model, "model_type", ""))
    try:
        recorder = TraceRecorder(path, num_experts=max(counts), top_k=top_k, model=name, arch=arch,
                                 expert_bytes=[_expert_bytes(site.module, n) for site, n in zip(sites, counts)])  # fmt: skip
    except OSError as e:
        raise ValueError(f"cannot write the trace {os.fspath(path)}: {e.strerror or e}") from None
    for layer, site in enumerate(sites):
        setattr(site.parent, site.attr, RecordedExperts(site.module, recorder, layer))
    return recorder


def check_target(path: str | os.PathLike) -> None:
    """Only a previous trace is overwritten: any other file at `path` is refused (ValueError)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"cannot write the trace {path}: it exists and is not a regular file")
    with open(path, "rb") as f:
        head = f.read(64)
    if head and not head.startswith(b"# route_trace"):
        raise ValueError(f"cannot write the trace {path}: it exists and is not a route trace (refusing to replace it)")


def recorder_of(model: nn.Module) -> TraceRecorder | None:
    """The recorder installed on `model`, if any."""
    for _, m in model.named_modules():
        if isinstance(m, RecordedExperts):
            return m.recorder
    return None


def stop(model: nn.Module) -> TraceRecorder | None:
    """Put the original modules back and close the file; returns the recorder (None if none)."""
    found = None
    for site in find_switches(model, (RecordedExperts,)):
        found = site.module.recorder
        setattr(site.parent, site.attr, site.module.inner)
    if found is not None:
        found.close()
    return found

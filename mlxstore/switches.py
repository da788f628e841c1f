"""Where an mlx-lm model keeps its experts: the one place that knows the model's MoE structure.

Every mlx-lm MoE architecture keeps its stacked experts in a `SwitchGLU` or `SwitchMLP`
(mlx_lm.models.switch_layers); the block around it owns the router and the top-k. No
per-architecture table: whatever the model type, those modules are what pack groups
expert-major, what streaming replaces and what trace replay wraps. It lives in mlxstore/
because pack needs it; moe/ builds on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.nn as nn

from mlxstore.mlxlm import SWITCH_TYPES

# How mlx-lm's blocks and configs name the experts each token uses; `k` only on a module.
_TOP_K_NAMES = ("top_k", "num_experts_per_tok", "num_experts_per_token", "experts_per_token", "top_k_experts",
                "moe_topk", "moe_top_k", "moe_k", "n_activated")  # fmt: skip
_ROUTER_NAMES = ("gate", "router")


@dataclass
class SwitchSite:
    """One MoE layer: where its switch module sits and the router beside it."""

    path: str
    module: nn.Module
    parent: nn.Module
    attr: str
    top_k: int | None
    router: nn.Module | None


def find_switches(model: nn.Module, kinds: tuple[type, ...] = SWITCH_TYPES) -> list[SwitchSite]:
    """Every outermost module of `kinds` (default: the switch modules), in layer order.

    `kinds` may add wrappers that stand in for a switch module (streaming, replay), so a
    model that was already changed is walked the same way; a switch module inside such a
    wrapper is not listed again.
    """
    found = [(p, m) for p, m in model.named_modules() if isinstance(m, kinds)]
    outer = [(p, m) for p, m in found if not any(p.startswith(q + ".") for q, _ in found)]
    sites = []
    for path, module in outer:
        parent_path, _, attr = path.rpartition(".")
        parent = _resolve(model, parent_path) if parent_path else model
        # The block around the switch module owns router and top-k; some blocks wrap the
        # switch module once more (the router then sits beside the wrapper).
        grand_path = parent_path.rpartition(".")[0]
        around = [parent] + ([_resolve(model, grand_path) if grand_path else model] if parent_path else [])
        router = next((r for r in (_first(n, _ROUTER_NAMES, nn.Module) for n in around) if r is not None), None)
        holders = [*around, router, getattr(model, "args", None)]
        top_k = next((k for k in map(_top_k, holders) if k is not None), None)
        sites.append(SwitchSite(path, module, parent, attr, top_k, router))
    sites.sort(key=lambda s: _natural_key(s.path))
    return sites


def _top_k(node) -> int | None:
    """Experts per token as `node` states it: its own attribute, or its args or config."""
    if node is None:
        return None
    for holder, names in ((node, (*_TOP_K_NAMES, "k")), (getattr(node, "args", None), _TOP_K_NAMES),
                          (getattr(node, "config", None), _TOP_K_NAMES)):  # fmt: skip
        for name in names if holder is not None else ():
            value = getattr(holder, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def num_experts(module: nn.Module) -> int:
    """How many experts a switch module stacks (its projections must agree); ValueError if unclear."""
    counts = {int(m.num_experts) for _, m in module.named_modules() if hasattr(m, "num_experts")}
    if len(counts) != 1:
        raise ValueError(f"cannot tell its number of experts (projections say {sorted(counts)})")
    return counts.pop()


def _first(node: nn.Module, names: tuple[str, ...], kind: type):
    return next((getattr(node, n) for n in names if isinstance(getattr(node, n, None), kind)), None)


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _resolve(model: nn.Module, path: str) -> nn.Module:
    node = model
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node

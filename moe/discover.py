"""Finding the experts in an mlx-lm model by walking its module tree.

Every mlx-lm MoE architecture keeps its stacked experts in a `SwitchGLU` or `SwitchMLP`
(mlx_lm.models.switch_layers); the block around it owns the router. No per-architecture
table: whatever the model type, those two classes are what streaming replaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxstore.mlxlm import SwitchGLU, SwitchMLP

SWITCH_TYPES = (SwitchGLU, SwitchMLP)
_TOP_K_NAMES = ("top_k", "num_experts_per_tok", "experts_per_token", "moe_topk", "n_activated")
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


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _resolve(model: nn.Module, path: str) -> nn.Module:
    node = model
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def find_switches(model: nn.Module) -> list[SwitchSite]:
    """Every switch module, in layer order, with its parent, top-k and router."""
    sites = []
    for path, module in model.named_modules():
        if not isinstance(module, SWITCH_TYPES):
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = _resolve(model, parent_path) if parent_path else model
        top_k = next((getattr(parent, n) for n in _TOP_K_NAMES if isinstance(getattr(parent, n, None), int)), None)
        router = next((getattr(parent, n) for n in _ROUTER_NAMES if isinstance(getattr(parent, n, None), nn.Module)), None)
        if router is not None and top_k is None:
            top_k = next((getattr(router, n) for n in _TOP_K_NAMES if isinstance(getattr(router, n, None), int)), None)
        sites.append(SwitchSite(path, module, parent, attr, top_k, router))
    sites.sort(key=lambda s: _natural_key(s.path))
    return sites


def predict_experts(router: nn.Module, x: mx.array, top_k: int) -> mx.array:
    """Expert ids a router would pick for `x` (lazy): ids directly, or top-k of its logits."""
    out = router(x)
    if isinstance(out, (tuple, list)):
        return out[0]
    return mx.argpartition(-out, kth=top_k - 1, axis=-1)[..., :top_k]

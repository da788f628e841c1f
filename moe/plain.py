"""Plain attributes on mlx modules: state a module carries that is not a weight or a child."""

from __future__ import annotations

from typing import Any

import mlx.nn as nn


def set_plain(module: nn.Module, name: str, value: Any) -> None:
    """`module.name = value` as an ordinary Python attribute, never a parameter or a child.

    Why: `nn.Module.__setattr__` files arrays, lists, tuples, dicts and modules as the
    module's parameters and children, so a slot bank, a list of trace rows, a plan or the
    next layer's router set the usual way would be walked by `parameters()`,
    `named_modules()`, `update()` and `mx.eval(model.parameters())`, and a module kept by
    reference (a router, a pipeline stage) would be found twice. Every streaming, replay
    and pipeline wrapper sets its own state through this function.
    """
    object.__setattr__(module, name, value)

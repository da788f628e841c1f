"""The base of the modules that take a switch module's place (streaming, replay, record).

Why: a model may read more off its switch module than its call. muse_spark keeps a norm
under its experts (`self.experts.post_expert_norm`, read after the call), so a wrapper
in the switch module's place answers for it: a child or array the wrapper lacks is
looked up among the wrapped module's (its methods and plain attributes are not, so a
check such as `hasattr(m, "to_quantized")` still sees the wrapper). The wrapped module
stays the one child (`inner`), so parameters and names are as before.
"""

from __future__ import annotations

import mlx.nn as nn


class Wrapper(nn.Module):
    """A module in a switch module's place; `inner` is the module it wraps."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.get("inner")
            if inner is None or name not in inner:  # its children and arrays only, not its methods
                raise
            return inner[name]

"""mlxstore.switches finds every MoE layer's switch module, router and top-k, wherever the
architecture keeps them (beside the switch module, one wrapper up, in the block's args)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxstore.moe.discover import predict_experts, remember_input, take_input
from mlxstore.switches import find_switches
from mlxstore.synth import ARCHITECTURES, build, tiny_config

TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_k", "top_k_experts")


@pytest.mark.parametrize("arch", sorted(a for a in ARCHITECTURES if a != "llama"))
def test_every_moe_layer_has_its_router_and_top_k(arch):
    config = tiny_config(arch)
    top_k = next(config[k] for k in TOP_K_KEYS if k in config)
    sites = find_switches(build(config))
    assert sites, f"{arch}: no switch module found"
    for site in sites:
        assert site.top_k == top_k, (arch, site.path)
        assert site.router is not None, (arch, site.path)
        ids = predict_experts(site.router, mx.zeros((1, 3, config["hidden_size"])), site.top_k)
        assert ids.shape == (1, 3, top_k), (arch, site.path)  # what next-layer prefetch reads


def test_a_remembered_router_keeps_its_input_once_however_called():
    """Next-layer prediction applies the next router to what this layer's router was
    given; the router keeps it until taken, whether given by position or by name."""
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 3)

        def __call__(self, hidden_states):
            return self.proj(hidden_states)

    for router, call in ((nn.Linear(4, 3), lambda r, x: r(x)), (Named(), lambda r, x: r(hidden_states=x))):
        names = [k for k, _ in router.parameters().items()]
        remember_input(router)
        x = mx.ones((1, 2, 4))
        assert call(router, x).shape == (1, 2, 3)
        assert take_input(router) is x and take_input(router) is None
        assert [k for k, _ in router.parameters().items()] == names  # no parameter added

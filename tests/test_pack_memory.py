"""pack keeps memory near one layer's experts, not the model: measured as peak RSS growth
of a fresh process packing a ~100 MB model of many layers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlxstore.synth import make_model_dir

# 8 MoE layers of 16 experts x 3 projections x 512 x 256 bfloat16: 12.6 MB each.
BIG = {
    "hidden_size": 512, "intermediate_size": 512, "num_attention_heads": 8, "head_dim": 64,
    "num_key_value_heads": 4, "num_hidden_layers": 8, "num_experts": 16,
    "moe_intermediate_size": 256,
}  # fmt: skip
LAYER_EXPERT_BYTES = 16 * 3 * 512 * 256 * 2

# ru_maxrss would carry the forking pytest process's peak into the child, so the child
# resets its own high-water mark (Linux: clear_refs 5) and reads VmHWM after packing.
_CHILD = """
import json, sys
from mlxstore.pack import pack
import mlxstore.mlxlm  # mlx-lm's imports and their buffers are the baseline, not pack's cost

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmHWM")
pack(sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"before": before, "after": status("VmHWM")}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self peak RSS")
def test_peak_rss_growth_is_about_one_layer(tmp_path):
    src = make_model_dir("qwen3_moe", tmp_path / "big", quantize=False, config_overrides=BIG)
    model_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert model_bytes > 100e6
    out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(tmp_path / "store")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    growth = rss["after"] - rss["before"]
    assert rss["before"] > 20e6  # the measurement works: imports alone take more
    assert growth < 3 * LAYER_EXPERT_BYTES, f"peak RSS grew {growth / 1e6:.0f} MB"
    assert growth < model_bytes / 3

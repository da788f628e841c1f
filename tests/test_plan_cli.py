"""`mlxstore plan`: the plan before loading, from a store or from its config.json alone."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlxstore import moe
from mlxstore.cli.main import main


def _plan(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["plan", *map(str, args)])
    return r.exit_code, r.output


def test_store_and_config_plan_alike(model_dir, store_dir):
    for case in ("qwen3_moe-mixed", "gpt_oss-mxfp4", "deepseek_v3"):
        code, from_store = _plan(store_dir(case), "--memory-budget", "300MB", "--json")
        assert code == 0, from_store
        code, from_config = _plan(model_dir(case) / "config.json", "--memory-budget", "300MB", "--json")
        assert code == 0, from_config
        a, b = json.loads(from_store), json.loads(from_config)
        for key in ("dense_bytes", "expert_bytes", "num_layers", "num_experts", "top_k", "itemsize", "latent_kv"):
            assert a["spec"][key] == b["spec"][key], (case, key)
        assert a["plan"] == b["plan"] and a["minimum"] == b["minimum"] and a["all_experts"] == b["all_experts"]
        assert a["minimum"] < a["all_experts"]


@pytest.mark.parametrize("flags", [{}, {"prefetch": "next-layer-read", "fill": "staged", "staged_load_size": "1MiB"},
                                   {"prefetch": "next-layer-read", "fill": "direct"}])  # fmt: skip
def test_plan_matches_what_load_does(store_dir, flags):
    """Also with the load options that hold memory besides slots (staging, read-ahead)."""
    store = store_dir("qwen3_moe")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    code, out = _plan(store, "--memory-budget", "70MB", "--max-context", "512", "--json", *args)
    assert code == 0, out
    planned = json.loads(out)["plan"]
    model, _ = moe.load(store, "70MB", max_context=512, **flags)
    loaded = moe.plan_of(model)
    assert planned["slots_per_layer"] == loaded.slots_per_layer
    assert planned["prefill_step_size"] == loaded.prefill_step_size
    assert planned["total_bytes"] == loaded.total_bytes <= 70_000_000
    assert planned["activation_bytes"] == loaded.activation_bytes and planned["kv_bytes"] == loaded.kv_bytes
    assert planned["staging_bytes"] == loaded.staging_bytes and (loaded.staging_bytes > 0 or not flags)


def test_plan_text_names_every_part(store_dir):
    code, out = _plan(store_dir("mixtral"), "--memory-budget", "100MB")
    assert code == 0, out
    for word in ("dense", "slots per layer", "KV cache", "activations", "headroom", "prefill step", "minimum",
                 "all experts", "auto (None)"):
        assert word in out, word


def test_budget_below_minimum_still_reports_it(store_dir):
    code, out = _plan(store_dir("qwen3_moe"), "--memory-budget", "1KB")
    assert code == 0
    assert "too small: at least" in out and "minimum" in out


def test_bad_sources_are_one_line_errors(tmp_path):
    for source, words in ((tmp_path / "nope", "no such store"), ("nobody/no-such-model-x", "Hugging Face cache")):
        code, out = _plan(source)
        assert code != 0 and out.startswith("Error: ") and words in out and "Traceback" not in out
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    code, out = _plan(bad)
    assert code != 0 and "not valid JSON" in out

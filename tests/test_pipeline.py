"""Pipeline parallel over mlx.distributed: 2 and 3 ranks on loopback (`mlx.launch --backend ring`).

Each run must give the resident mlx-lm model's logits and tokens bit for bit on every rank,
stay within each rank's plan, read only the rank's own layers' experts, and fail on every
rank (not hang) when one rank cannot load or dies.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx_lm import stream_generate
from pipeline_worker import logits_trace

from mlxstore.mlxlm import make_sampler
from mlxstore.moe.pipeline import split

WORKER = Path(__file__).with_name("pipeline_worker.py")
TIMEOUT = 120  # seconds for a whole launch; a hang fails the test instead of the suite

pytestmark = pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch not installed")


def _port(ranks: int) -> int:
    """A base port whose `ranks` successors are free too (the ring backend binds one per
    rank from --starting-port; a busy successor made a launch fail at connect time)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            for p in range(base, base + ranks + 1):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports for the ring backend")


def _launch(ranks: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = ["mlx.launch", "-n", str(ranks), "--backend", "ring", "--starting-port", str(_port(ranks)),
           sys.executable, str(WORKER), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("case, ranks, slots", [("qwen3_moe", 2, 4), ("llama", 2, 0), ("gpt_oss", 2, 2),
                                                 ("qwen3_next", 3, 4)])  # fmt: skip
def test_pipeline_bit_identical(model_dir, store_dir, tmp_path, case, ranks, slots):
    out = tmp_path / "run"
    proc = _launch(ranks, str(store_dir(case)), str(out), str(slots))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resident, tokenizer = mlx_lm.load(str(model_dir(case)))
    prompt = mx.array(np.random.default_rng(0).integers(3, 512, size=(1, 12)), dtype=mx.int32)
    want = logits_trace(resident, prompt, steps=4)
    mx.random.seed(7)
    want_sampled = [r.token for r in stream_generate(resident, tokenizer, prompt[0].tolist(), max_tokens=6,
                                                      sampler=make_sampler(temp=1.0))]  # fmt: skip
    reports = []
    for rank in range(ranks):
        got = np.load(f"{out}.{rank}.npz")
        assert all(np.array_equal(w, got[f"arr_{i}"]) for i, w in enumerate(want)), f"rank {rank}: logits differ"
        report = json.loads(Path(f"{out}.{rank}.json").read_text())
        assert report["sampled"] == want_sampled, f"rank {rank}: sampled tokens differ"
        if report["plan_total"] is not None:
            assert report["peak"] <= report["plan_total"], f"rank {rank}: peak memory above its plan"
        reports.append(report)
    assert all(r["unseeded"] == reports[0]["unseeded"] for r in reports), "ranks sampled different tokens"
    if slots:  # every streamed layer is read, each by exactly one rank
        flat = [name for r in reports for name in r["read"]]
        assert flat and len(flat) == len(set(flat)), [r["read"] for r in reports]
    if case == "qwen3_moe":
        assert [r["read"] for r in reports] == [["model.layers.0.mlp.switch_mlp"], ["model.layers.1.mlp.switch_mlp"]]


def test_rank_that_cannot_open_the_store_fails_every_rank(store_dir, tmp_path):
    # Rank 1 sees a store path that does not exist: both ranks must report it and exit.
    proc = _launch(2, "{missing}", str(tmp_path / "run"), "4",
                   env={"PIPELINE_TEST_STORE": str(store_dir("qwen3_moe"))})  # fmt: skip
    assert proc.returncode != 0 or "failed to load" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("rank 1 of 2 failed to load") == 2, proc.stderr[-3000:]


def test_rank_that_dies_fails_every_rank(store_dir, tmp_path):
    # Rank 1 exits after loading; rank 0 must stop (its peer-lost error, or mlx.launch
    # ending it) within the launch timeout instead of waiting forever for hidden states.
    proc = _launch(2, str(store_dir("qwen3_moe")), str(tmp_path / "run"), "4", env={"PIPELINE_TEST_DIE": "1"})
    assert "rank 1 exited with code 3" in proc.stderr, proc.stderr[-3000:]
    assert "connection to a peer was lost" in proc.stderr or "rank 0 exited with code" in proc.stderr
    assert not Path(f"{tmp_path / 'run'}.0.json").exists()


def test_split_balances_bytes():
    assert split([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert split([10, 1, 1, 1, 1], 2) == [(0, 1), (1, 5)]
    assert split([1, 2, 3], 3) == [(0, 1), (1, 2), (2, 3)]
    ranges = split([5, 1, 1, 1, 1, 1, 4], 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == 7 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(sum([5, 1, 1, 1, 1, 1, 4][a:b]) for a, b in ranges) == 5


def test_model_without_a_layer_list_is_refused():
    import mlx.nn as nn

    from mlxstore.formats import StoreError
    from mlxstore.moe.pipeline import shard

    class Args:
        model_type = "no_layers"

    model = nn.Linear(4, 4)
    model.args = Args()
    with pytest.raises(StoreError, match="architecture 'no_layers' cannot run as a pipeline"):
        shard(model, None, mx.distributed.init())

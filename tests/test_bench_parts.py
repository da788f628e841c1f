"""The bench harness's pieces: worker protocol, merging replies, raw replays, verdicts."""

from __future__ import annotations

import io
import json

import pytest

from bench.harness.driver import Worker, WorkerDied, WorkerError, merge
from bench.harness.rawio import raw_batches
from bench.harness.report import targets_table
from bench.harness.targets import TARGETS, verdict
from bench.harness.worker import read_bytes_so_far, serve


def test_serve_answers_and_reports_errors():
    inp = io.StringIO('{"op": "ping"}\n{"op": "nope"}\n{"op": "prefill", "tokens": [1]}\n'
                      '{"op": "quit"}\n{"op": "ping"}\n')
    out = io.StringIO()
    serve(inp, out)
    ping, unknown, no_model = (json.loads(line) for line in out.getvalue().splitlines())
    assert ping["pid"] > 0 and ping["rss"] > 0
    assert "KeyError" in unknown["error"]
    assert "error" in no_model  # no model loaded: an error reply, the worker lives on


def test_worker_process_roundtrip_and_death(tmp_path):
    with Worker("t", tmp_path) as w:
        assert w.call("ping")["pid"] == w.proc.pid
        with pytest.raises(WorkerError):
            w.call("prefill", tokens=[1])
        w.proc.kill()
        w.proc.wait()
        with pytest.raises(WorkerDied) as e:
            w.call("ping")
        assert e.value.info["returncode"] == -9


def test_merge_sums_decode_replies():
    a = {"seconds": [0.5], "io_read_bytes": 10, "sync_seconds": 0.1, "stats": {"requests": 8, "hits": 2, "bytes_read": 6}}
    b = {"seconds": [0.25, 0.25], "io_read_bytes": 5, "sync_seconds": 0.2, "stats": {"requests": 8, "hits": 6, "bytes_read": 2}}
    m = merge([a, b])
    assert m["tokens"] == 3 and m["tok_per_s"] == 3.0
    assert m["io_read_bytes"] == 15 and m["stats"]["bytes_read"] == 8
    assert m["stats"]["hit_rate"] == 0.5


def test_raw_batches_read_exact_bytes(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(bytes(range(256)) * 4096)
    batches = [[(f, 0, 4096), (f, 65536, 8192)], [(f, 4096, 100)]]
    r = raw_batches(batches, threads=4)
    assert r["bytes"] == 4096 + 8192 + 100 and r["batches"] == 2 and r["gb_per_s"] > 0


def test_read_bytes_counter_is_readable():
    assert read_bytes_so_far() >= 0


def test_verdicts_and_table():
    assert verdict("P1", 0.99)["met"] is True
    assert verdict("P3", 1.2)["met"] is False
    assert verdict("P2", None)["met"] is False
    assert verdict("P8", "OOM-killed during load")["met"] is None
    table = targets_table({tid: verdict(tid, 1.0) for tid in TARGETS})
    assert all(tid in table for tid in TARGETS)


def test_a_rerun_writes_a_new_results_file(tmp_path, monkeypatch):
    """Commands default to bench/results/<name>-<time>.json: never a file that exists."""
    from click.testing import CliRunner

    from bench.commands.policy import command as policy_command
    from bench.harness import results

    monkeypatch.setattr(results, "RESULTS", tmp_path)
    committed = tmp_path / "policy.json"
    committed.write_text("the README's figures\n")
    first = results.new_result("policy")
    first.write_text("{}")
    second = results.new_result("policy")
    assert first.name.startswith("policy-") and second != first and not second.exists()
    trace = tmp_path / "t.route.csv"
    trace.write_text("# model=toy arch=toy n_layer=1 n_expert=4 n_expert_used=1\n"
                     "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n"
                     + "".join(f"0,1,{s},0,0,{s % 3},1.0,0,1\n" for s in range(6)))  # fmt: skip
    r = CliRunner().invoke(policy_command, ["--trace", str(trace), "--slots", "1", "--policies", "lru"])
    assert r.exit_code == 0, r.output
    assert committed.read_text() == "the README's figures\n"
    assert len(list(tmp_path.glob("policy-*.json"))) == 2


def test_hostpath_bench_times_every_configuration(tmp_path):
    """`python -m bench hostpath` runs every configuration (the stub must fit each call path)."""
    import json

    from click.testing import CliRunner

    from bench.commands.hostpath import command

    out = tmp_path / "hostpath.json"
    r = CliRunner().invoke(command, ["--calls", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 7 and all(row["median_us"] > 0 for row in rows.values())
    assert next(v for k, v in rows.items() if k.startswith("25%"))["misses_per_call"] > 0
    staged = [v for k, v in rows.items() if "staged" in k]
    assert len(staged) == 2 and all(v["copy_queue_us"] > 0 for v in staged)


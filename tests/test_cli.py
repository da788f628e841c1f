"""The command line as a user meets it: one-line errors, fast start, chat on stdin."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from mlxstore.cli.main import main

MAIN = [sys.executable, "-c", "from mlxstore.cli.main import main; main()"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory-budget", "-1"], "is negative"), (["--memory-budget", "abc"], "not a number"),
        (["--memory-budget", "8 gigs"], "unknown unit 'gigs'"), (["--memory-budget", "1e9"], "exponents"),
        (["--memory-budget", "1KB"], "too small: at least"), (["--policy", "bogus"], "unknown policy 'bogus'"),
        (["--max-context", "-5"], "--max-context"), (["--max-context", "0"], "--max-context"),
        (["--headroom", "x"], "--headroom"),
    ],
)  # fmt: skip
def test_bad_values_get_one_line_errors(store_dir, args, message):
    r = CliRunner().invoke(main, ["generate", "--model", str(store_dir("qwen3_moe")), "-m", "1", *args])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("Error:")], r.output


def test_fill_flag_forces_either_miss_path_with_the_same_tokens(store_dir):
    outs = []
    for fill in ("direct", "staged"):
        r = CliRunner().invoke(main, ["generate", "--model", str(store_dir("qwen3_moe")), "--slots-per-layer", "4",
                                      "--fill", fill, "-m", "6", "-p", "w5 w9 w17"])  # fmt: skip
        assert r.exit_code == 0, r.output
        outs.append(r.output.split("\nprompt ")[0])  # the text, not the stats line
    assert outs[0].strip() and outs[0] == outs[1]
    r = CliRunner().invoke(main, ["generate", "--model", str(store_dir("qwen3_moe")), "--fill", "bogus"])
    assert r.exit_code != 0 and "--fill" in r.output and "Traceback" not in r.output


def test_budget_minimum_is_stated_in_the_unit_typed(store_dir):
    r = CliRunner().invoke(main, ["generate", "--model", str(store_dir("qwen3_moe")), "--memory-budget", "1000KB"])
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: memory budget 1000KB is too small: at least ") and " KB is needed" in line


def test_damaged_expert_names_expert_and_file(store_dir, tmp_path):
    import shutil

    from mlxstore.formats import StoreReader

    store = shutil.copytree(store_dir("qwen3_moe"), tmp_path / "s")
    with StoreReader(store) as r:
        group = next(iter(r.index.expert_groups.values()))
        extent, shard = group.extents[0], r.index.shards[group.extents[0].shard].name
    with open(store / shard, "r+b") as f:  # damage every expert of one layer
        f.seek(extent.offset)
        f.write(bytes(group.extents[-1].offset + group.extents[-1].length - extent.offset))
    r = CliRunner().invoke(main, ["generate", "--model", str(store), "--slots-per-layer", "8", "--check", "-m", "2"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "checksum mismatch" in r.output and "expert" in r.output and f"in file {shard}" in r.output


def test_help_and_info_do_not_import_mlx_lm(store_dir):
    code = ("import sys; from mlxstore.cli.main import main\n"
            "try: main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx_lm', 'transformers')))")  # fmt: skip
    for args in (["--help"], ["info", str(store_dir("qwen3_moe"))]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "[]", args


def test_info_into_a_closed_pipe_exits_0(store_dir):
    shell = f"{' '.join(map(repr, MAIN))} info --extents {store_dir('qwen3_moe')} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stdout.startswith("store")


def test_info_summary_and_extents(store_dir):
    short = CliRunner().invoke(main, ["info", str(store_dir("qwen3_moe"))]).output
    full = CliRunner().invoke(main, ["info", "--extents", str(store_dir("qwen3_moe"))]).output
    assert "experts " in short and "expert 0:" not in short and "expert 0:" in full


def test_chat_reuses_the_cache_across_turns(store_dir):
    r = subprocess.run([*MAIN, "chat", "--model", str(store_dir("qwen3_moe")), "--slots-per-layer", "4", "-m", "3"],
                       input="w11 w42\nw7 w99 w3\nq\nnever asked\n", capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    stats = [ln for ln in r.stderr.splitlines() if ln.startswith("prompt ")]
    assert len(stats) == 2 and all("decode 3 tok" in s for s in stats)
    assert len(r.stdout.strip().splitlines()) == 2

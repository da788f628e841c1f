"""`python -m bench recipes [--write]`: the README's table of plans for large MoE checkpoints.

Each `bench/recipes/*.json` is the config.json of a public checkpoint at its usual
mlx-community quantization, written by hand from the published architecture (no weights
here). `mlxstore plan` builds each model lazily from it, so the table is what the planner
would say about the real checkpoint. A Mac's budget is taken as MAC_SHARE of its RAM
(macOS and the process keep the rest); the KV cache is planned at MAX_CONTEXT tokens.
tests/test_recipes.py regenerates the table and checks that the README holds it.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
README = Path(__file__).resolve().parents[2] / "README.md"
MACS_GB = (16, 24, 32, 48, 64, 128)
MAC_SHARE = 0.75
MAX_CONTEXT = 4096
START, END = "<!-- recipes:start -->", "<!-- recipes:end -->"
SSD_GBPS = (3, 6)  # read speeds the routing table predicts decode at (an M1-class and an M4-class SSD)


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}"


def table() -> str:
    """The markdown table, one row per recipe, sorted by total size."""
    from mlxstore.formats import StoreError
    from mlxstore.moe.spec import spec_of, summarize

    rows = []
    for path in sorted(RECIPES.glob("*.json")):
        spec = spec_of(path)
        summary = summarize(spec, None, max_context=MAX_CONTEXT)
        cells = []
        for gb in MACS_GB:
            try:
                plan = spec.plan(int(gb * 2**30 * MAC_SHARE), max_context=MAX_CONTEXT)
            except StoreError:  # below the minimum
                cells.append("-")
                continue
            cells.append(f"{plan.slots_per_layer} ({plan.slots_per_layer / plan.num_experts:.0%})")
        per_expert = spec.expert_bytes / spec.num_layers
        rows.append((spec.dense_bytes + spec.all_expert_bytes, [
            path.stem, f"`{spec.model_type}`",
            f"{spec.num_experts} x {spec.num_layers}, top-{spec.top_k}", _gb(spec.dense_bytes),
            f"{per_expert / 2**20:.2f}", _gb(spec.all_expert_bytes), _gb(summary.minimum),
            _gb(summary.all_experts), *cells]))  # fmt: skip
    head = ["recipe", "type", "experts x layers", "dense GiB", "MiB per expert",
            "experts GiB", "minimum GiB", "all experts GiB", *(f"{gb} GB Mac" for gb in MACS_GB)]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in sorted(rows)]
    return "\n".join(lines) + "\n\n" + routing_table()


def _closest_trace(spec):
    """The bundled trace routing over as many experts per layer as the model (gpt-oss's own
    for gpt_oss, else the Qwen3 one), or None when no bundled trace has that many."""
    from mlxstore.formats.route_trace import load_route_trace
    from mlxstore.traces import find_trace

    names = ("gpt-oss-120b", "qwen3-30b-a3b") if spec.model_type == "gpt_oss" else ("qwen3-30b-a3b", "gpt-oss-120b")
    for name in names:
        trace = load_route_trace(find_trace(name))
        if trace.n_expert == spec.num_experts:
            return name, trace
    return None


def routing_table() -> str:
    """Per recipe and Mac: the default policy's hit rate with the closest real trace
    replayed (prompt warms the cache, decode counts) and the decode tok/s the reads alone
    allow at each SSD_GBPS (an upper bound: compute is not counted)."""
    from mlxstore.formats import StoreError
    from mlxstore.moe.advisor import AdviseOptions, advise, shape_of
    from mlxstore.moe.policy import DEFAULT_POLICY
    from mlxstore.moe.spec import spec_of

    head = ["recipe", "trace", *(f"{gb} GB Mac" for gb in MACS_GB)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for path in sorted(RECIPES.glob("*.json")):
        spec = spec_of(path)
        found = _closest_trace(spec)
        if found is None:
            rows.append((spec.dense_bytes + spec.all_expert_bytes,
                         [path.stem, f"none with {spec.num_experts} experts"] + ["-"] * len(MACS_GB)))  # fmt: skip
            continue
        name, trace = found
        budgets, cells = [], {}
        for gb in MACS_GB:
            budget = int(gb * 2**30 * MAC_SHARE)
            try:
                spec.plan(budget, max_context=MAX_CONTEXT)
                budgets.append(budget)
            except StoreError:
                cells[budget] = "-"
        advice = advise(trace, shape_of(spec), lambda b, spec=spec: spec.plan(b, max_context=MAX_CONTEXT).slots_per_layer,
                        budgets, AdviseOptions(policies=(DEFAULT_POLICY,)), disk_gbps=1.0)  # fmt: skip
        for r in advice.rows:
            speeds = " / ".join(f"{g * 1e3 / r.missed_mb_per_token:.0f}" if r.missed_mb_per_token else "all"
                                for g in SSD_GBPS)  # fmt: skip
            cells[r.budget] = f"{r.hit_rate:.2f}, {speeds}"
        rows.append((spec.dense_bytes + spec.all_expert_bytes,
                     [path.stem, name] + [cells[int(gb * 2**30 * MAC_SHARE)] for gb in MACS_GB]))  # fmt: skip
    lines += ["| " + " | ".join(cells) + " |" for _, cells in sorted(rows)]
    return "\n".join(lines)


def readme_table(text: str) -> str | None:
    """The table between the README's markers (None without them)."""
    m = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    return m.group(1).rstrip("\n") if m else None


@click.command("recipes")
@click.option("--write", is_flag=True, help="Replace the table in README.md.")
def command(write: bool) -> None:
    """Plans of large MoE checkpoints from their configs (bench/recipes), for the README."""
    text = table()
    if write:
        readme = README.read_text()
        if readme_table(readme) is None:
            raise click.ClickException(f"README.md has no {START} ... {END} markers")
        block = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
        README.write_text(block.sub(lambda _: f"{START}\n{text}\n{END}", readme, count=1))
    click.echo(text)

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

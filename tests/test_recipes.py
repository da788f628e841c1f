"""The README's recipe table is what `mlxstore plan` says about the configs in bench/recipes."""

from bench.commands import recipes as recipe_table
from mlxstore.moe.spec import spec_of


def test_readme_recipe_table_is_current():
    got = recipe_table.readme_table(recipe_table.README.read_text())
    assert got is not None, "README has no recipe table markers"
    assert got == recipe_table.table(), "README recipe table is stale: run python -m bench recipes --write"


def test_recipes_build_their_architectures():
    """Each recipe builds its mlx-lm class with experts (a typo in a config would not)."""
    sizes = {p.stem: spec_of(p) for p in sorted(recipe_table.RECIPES.glob("*.json"))}
    assert len(sizes) >= 6
    for name, spec in sizes.items():
        assert spec.num_layers > 0 and spec.num_experts >= 64 and spec.top_k >= 4, name
        assert spec.expert_bytes * spec.num_experts > 10 * spec.dense_bytes, name  # MoE: experts dominate

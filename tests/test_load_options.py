"""LoadOptions: every streaming option is checked once, before any work, naming the option."""

from __future__ import annotations

import pytest

from mlxstore import moe
from mlxstore.moe.options import LoadOptions, OptionError


@pytest.mark.parametrize("bad, name", [
    ({"prefetch": "sometimes"}, "prefetch"), ({"page_cache": "maybe"}, "page_cache"),
    ({"policy": "bogus"}, "policy"), ({"memory_budget": "8 gigs"}, "memory_budget"),
    ({"headroom": -1}, "headroom"), ({"reserve": "x"}, "reserve"), ({"io_threads": 0}, "io_threads"),
    ({"staged_load_size": "lots"}, "staged_load_size"), ({"staged_load_size": -1}, "staged_load_size"), ({"staged_load_size": 0}, "staged_load_size"),
    ({"read_size": "big"}, "read_size"), ({"read_size": 0}, "read_size"), ({"staged_copy": "memcpy"}, "staged_copy"),
    ({"fill": "poured"}, "fill"), ({"passes": "some"}, "passes"), ({"overlap": "yes"}, "overlap"), ({"optimistic": 1}, "optimistic"),
])  # fmt: skip
def test_bad_value_names_the_option(bad, name):
    with pytest.raises(OptionError, match=f"^{name}"):
        LoadOptions(**bad)
    with pytest.raises(OptionError, match=f"^{name}"):  # before the store is even opened
        moe.load("/nonexistent/store", **bad)


def test_load_keywords_build_the_same_options(store_dir):
    store = store_dir("qwen3_moe")
    a, _ = moe.load(store, slots_per_layer=4, max_context=64, policy="lru")
    b, _ = moe.load_with(store, LoadOptions(slots_per_layer=4, max_context=64, policy="lru"))
    assert moe.plan_of(a) == moe.plan_of(b)
    policies = [{type(m.bank.policy).__name__ for _, m in model.named_modules() if hasattr(m, "bank")} for model in (a, b)]
    assert policies[0] == policies[1] == {"LRUPolicy"}
    assert isinstance(OptionError("x"), ValueError)  # callers that caught ValueError still do


def test_cli_choices_are_the_library_modes():
    """The CLI spells its choices out (it imports no MLX to parse flags): they must be the
    library's modes, so a mode added to one is offered by the other."""
    import click

    from mlxstore.cli.options import load_options
    from mlxstore.moe.bank import FILL_MODES, STAGED_COPIES
    from mlxstore.moe.options import PAGE_CACHE_MODES
    from mlxstore.moe.plan import PAST_MAX_CONTEXT
    from mlxstore.moe.streaming import PREFETCH_MODES

    command = load_options(click.command()(lambda **kw: None))
    choices = {p.name: tuple(p.type.choices) for p in command.params if isinstance(p.type, click.Choice)}
    assert choices == {"prefetch": PREFETCH_MODES, "page_cache": PAGE_CACHE_MODES, "fill": FILL_MODES,
                       "staged_copy": STAGED_COPIES, "past_max_context": PAST_MAX_CONTEXT}  # fmt: skip

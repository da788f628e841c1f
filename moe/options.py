"""The streaming options of `moe.load`, in one object validated once, at the edge.

`moe.load(store, memory_budget=..., ...)` builds a `LoadOptions` from its keywords; the CLI
builds one from its flags (cli/options.py). Either way the values are checked here, once,
and a bad one raises `OptionError` naming the option; from then on the object travels
whole (load -> plan -> banks), and each default below is the only statement of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxstore.sizes import parse_size

from .plan import DEFAULT_MAX_CONTEXT
from .policy import DEFAULT_POLICY, POLICIES

PAGE_CACHE_MODES = ("keep", "drop")

# Chosen from the prefetch x page-cache table of `python -m bench all` (README, "Measured"):
# dropping read pages was never slower than keeping them (an expert held twice, in a slot
# and in the page cache, only takes memory from the slots), and WILLNEED hints were rarely
# used and did not pay for the disk traffic they add.
DEFAULT_PREFETCH = "none"
DEFAULT_PAGE_CACHE = "drop"
DEFAULT_IO_THREADS = 4


class OptionError(ValueError):
    """A streaming option with a bad value; the message names the option."""


@dataclass(frozen=True)
class LoadOptions:
    """How a store is streamed (see `moe.load` for what each option means)."""

    memory_budget: int | str | None = None
    slots_per_layer: int | None = None
    max_context: int = DEFAULT_MAX_CONTEXT
    headroom: int | str | None = None
    policy: str = DEFAULT_POLICY
    prefetch: str = DEFAULT_PREFETCH
    page_cache: str = DEFAULT_PAGE_CACHE
    io_threads: int = DEFAULT_IO_THREADS
    check: bool = False
    tokenizer_config: dict | None = None
    reserve: int | str = 0

    def __post_init__(self) -> None:
        from .streaming import PREFETCH_MODES  # here, so the streaming module may import this one

        if self.prefetch not in PREFETCH_MODES:
            raise OptionError(f"prefetch must be one of {PREFETCH_MODES}, got {self.prefetch!r}")
        if self.page_cache not in PAGE_CACHE_MODES:
            raise OptionError(f"page_cache must be 'keep' or 'drop', got {self.page_cache!r}")
        if self.policy != "default" and self.policy not in POLICIES:
            raise OptionError(f"policy: unknown policy {self.policy!r}; choose from {sorted(POLICIES)}")
        for name in ("memory_budget", "headroom", "reserve"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_size(value)
                except (TypeError, ValueError) as e:
                    raise OptionError(f"{name}: {e}") from None
        if isinstance(self.io_threads, bool) or not isinstance(self.io_threads, int) or self.io_threads < 1:
            raise OptionError(f"io_threads must be an integer >= 1, got {self.io_threads!r}")
        # slots_per_layer and the budget's size against the model are the plan's to check
        # (moe/plan.py): they need the store.

"""The streaming options of `moe.load`, in one object validated once, at the edge.

`moe.load(store, memory_budget=..., ...)` builds a `LoadOptions` from its keywords; the CLI
builds one from its flags (cli/options.py). Either way the values are checked here, once,
and a bad one raises `OptionError` naming the option; from then on the object travels
whole (load -> plan -> banks), and each default below is the only statement of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxstore.sizes import parse_size

from .plan import DEFAULT_MAX_CONTEXT, DEFAULT_PAST_MAX_CONTEXT, PAST_MAX_CONTEXT
from .policy import DEFAULT_POLICY, POLICIES

PAGE_CACHE_MODES = ("keep", "drop")

# WILLNEED hints were rarely used and did not pay for the disk traffic they add (README,
# "Measured"). The OS page cache is a second tier for free (reclaimable, outside the
# budget): keeping a read expert's pages never lost on the CPU backend and made re-read
# misses several times faster on a GPU (README, "Linux with an NVIDIA GPU"); peers on
# Macs found the OS cache beating app-level expert caches.
DEFAULT_PREFETCH = "none"
DEFAULT_PAGE_CACHE = "keep"
# One more eval per layer, yet launching a layer's experts at once beat leaving them to the
# next layer's host sync on CUDA as on the CPU (README, "Linux with an NVIDIA GPU").
DEFAULT_OVERLAP = True
# A decode step after one without misses maps slots on the device and checks its ids once
# (moe.optimistic): one host sync per step instead of one per layer; a step that missed
# runs again, and only steps after a clean one try (README, "Linux with an NVIDIA GPU").
DEFAULT_OPTIMISTIC = True
# Staged fill: bytes of each of the two host buffers a call's misses are read into (whole
# experts per load), so the disk fills one while the GPU copies from the other
# (mlxstore.staging). A decode call's few misses fit one; a prompt's many take turns
# (README, "Linux with an NVIDIA GPU").
DEFAULT_STAGED_LOAD_SIZE = "8MiB"
DEFAULT_IO_THREADS = 16  # reads in flight: a layer's few misses, split, still fill the SSD's queue
# A miss's extent is read in parts of at least this, in parallel: smaller parts deepen a cold
# disk's queue, but each costs a thread's wakeup and a GIL handoff, which from the page cache
# cost more than the copy (README, "Linux with an NVIDIA GPU").
DEFAULT_READ_SIZE = "1MiB"
# Staged fill: how a load's bytes are copied into the slots, "scatter" (one scatter per
# tensor for a load of experts laid out alike, the load's bytes as a strided array of them)
# or "slices" (a slice update per expert and tensor, also what experts laid out otherwise
# get). Side by side on the H200, scatter queued and launched the copies in less time at
# 50% and 25% of the experts, cold and warm (README, "Linux with an NVIDIA GPU").
DEFAULT_STAGED_COPY = "scatter"
# A decode call with misses, where calls keep the resident call's shape ("full"): launch
# the call for its resident experts' rows before reading the misses, then again for the
# missed rows. On the H200 the second launch cost more than the overlap bought, so it is
# off (README, "Linux with an NVIDIA GPU"); it is there to measure on other GPUs. With
# passes="rows" the resident rows always go first.
DEFAULT_HITS_FIRST = False


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
    read_size: int | str = DEFAULT_READ_SIZE
    check: bool = False
    tokenizer_config: dict | None = None
    reserve: int | str = 0
    prefill_step_size: int | None = None  # None: the largest step whose activations fit
    kv_bits: int | None = None
    kv_group_size: int = 64
    max_kv_size: int | None = None
    past_max_context: str = DEFAULT_PAST_MAX_CONTEXT
    fill: str | None = None  # None: by backend (moe.bank.default_fill_mode)
    staged_load_size: int | str = DEFAULT_STAGED_LOAD_SIZE
    staged_copy: str = DEFAULT_STAGED_COPY
    passes: str | None = None  # None: by backend (moe.streaming.default_pass_mode)
    overlap: bool = DEFAULT_OVERLAP
    hits_first: bool = DEFAULT_HITS_FIRST
    optimistic: bool = DEFAULT_OPTIMISTIC

    def __post_init__(self) -> None:
        # here, so the streaming and bank modules may import this one
        from .bank import FILL_MODES, STAGED_COPIES
        from .streaming import PASS_MODES, PREFETCH_MODES

        if self.past_max_context not in PAST_MAX_CONTEXT:
            raise OptionError(f"past_max_context must be one of {PAST_MAX_CONTEXT}, got {self.past_max_context!r}")
        if self.fill is not None and self.fill not in FILL_MODES:
            raise OptionError(f"fill must be one of {FILL_MODES}, got {self.fill!r}")
        if self.staged_copy not in STAGED_COPIES:
            raise OptionError(f"staged_copy must be one of {STAGED_COPIES}, got {self.staged_copy!r}")
        if self.passes is not None and self.passes not in PASS_MODES:
            raise OptionError(f"passes must be one of {PASS_MODES}, got {self.passes!r}")
        for name in ("overlap", "hits_first", "optimistic"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.prefetch not in PREFETCH_MODES:
            raise OptionError(f"prefetch must be one of {PREFETCH_MODES}, got {self.prefetch!r}")
        if self.page_cache not in PAGE_CACHE_MODES:
            raise OptionError(f"page_cache must be 'keep' or 'drop', got {self.page_cache!r}")
        if self.policy != "default" and self.policy not in POLICIES:
            raise OptionError(f"policy: unknown policy {self.policy!r}; choose from {sorted(POLICIES)}")
        for name in ("memory_budget", "headroom", "reserve", "staged_load_size", "read_size"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_size(value)
                except (TypeError, ValueError) as e:
                    raise OptionError(f"{name}: {e}") from None
        if isinstance(self.io_threads, bool) or not isinstance(self.io_threads, int) or self.io_threads < 1:
            raise OptionError(f"io_threads must be an integer >= 1, got {self.io_threads!r}")
        if self.staged_load_size is not None and parse_size(self.staged_load_size) < 1:
            raise OptionError(f"staged_load_size must be at least 1 byte, got {self.staged_load_size!r}")
        if parse_size(self.read_size) < 1:
            raise OptionError(f"read_size must be at least 1 byte, got {self.read_size!r}")
        # slots_per_layer and the budget's size against the model are the plan's to check
        # (moe/plan.py): they need the store.

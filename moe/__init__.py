"""Streaming MoE experts from a store: `load`, `stats`, `reset_stats`, `plan_of`."""

from . import pipeline
from .context import ContextLimitError
from .load import load, load_with, plan_of, reset_stats, stats
from .options import DEFAULT_PAGE_CACHE, DEFAULT_PREFETCH, LoadOptions, OptionError
from .plan import Plan
from .stats import LayerStats, StreamStats

__all__ = ["ContextLimitError", "DEFAULT_PAGE_CACHE", "pipeline", "DEFAULT_PREFETCH", "LayerStats", "LoadOptions",
           "OptionError", "Plan", "StreamStats", "load", "load_with", "plan_of", "reset_stats", "stats"]  # fmt: skip

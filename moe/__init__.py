"""Streaming MoE experts from a store: `load`, `stats`, `reset_stats`, `plan_of`."""

from . import pipeline
from .context import ContextLimitError
from .load import DEFAULT_PAGE_CACHE, DEFAULT_PREFETCH, load, plan_of, reset_stats, stats
from .plan import Plan
from .stats import LayerStats, StreamStats

__all__ = ["ContextLimitError", "DEFAULT_PAGE_CACHE", "pipeline", "DEFAULT_PREFETCH", "LayerStats", "Plan", "StreamStats", "load", "plan_of", "reset_stats", "stats"]

"""What every measurement stage of `python -m bench all` shares: paths, scale, prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness.prepare import drop_tree_cache, tree_bytes
from bench.harness.scale import Scale
from mlxstore.moe.options import DEFAULT_IO_THREADS


@dataclass
class Ctx:
    scale: Scale
    src: Path  # the mlx-lm model directory
    store: Path  # the store packed from it (by the timed P7 pack)
    trace: Path  # the routing trace every decode replays
    work: Path  # scratch: logs, store copies
    io_threads: int = DEFAULT_IO_THREADS  # the raw-read reference uses as many threads as moe.load

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def store_bytes(self) -> int:
        return tree_bytes(self.store)

    @property
    def cap(self) -> int:
        """P4's memory cap: a third of the model (never below the scale's floor)."""
        return max(self.store_bytes // 3, self.scale.min_cap)

    def prompt(self, n: int | None = None, seed: int = 0) -> list[int]:
        """The same prompt tokens for every side (ids clear of the special tokens)."""
        n = self.scale.prompt if n is None else n
        return np.random.default_rng(seed).integers(8, self.scale.vocab, size=n).tolist()

    def streamed(self, **kw) -> dict:
        """Load arguments of a streamed side replaying the trace."""
        return {"engine": "mlxstore", "path": str(self.store), "trace": str(self.trace),
                "max_context": self.scale.max_context, **kw}  # fmt: skip

    def resident(self) -> dict:
        return {"engine": "mlx-lm", "path": str(self.src), "trace": str(self.trace)}

    def cold(self) -> None:
        """Drop the page cache of the model's files (source and store)."""
        drop_tree_cache(self.src)
        drop_tree_cache(self.store)

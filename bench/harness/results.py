"""Where bench commands write: a new results file per run, never the committed figures.

The README quotes the files committed under bench/results/ (checkcost.json, latest.md,
...); a rerun writes `bench/results/<command>-<UTC time>.json` (or `--out`), so comparing
a rerun with the README's figures is a diff of two files, and nothing is overwritten by
accident.
"""

from __future__ import annotations

import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
RESULTS = BENCH / "results"


def new_result(name: str, suffix: str = ".json") -> Path:
    """`bench/results/<name>-<UTC date-time><suffix>`, a path no earlier run has written."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path, n = RESULTS / f"{name}-{stamp}{suffix}", 1
    while path.exists():
        path, n = RESULTS / f"{name}-{stamp}-{n}{suffix}", n + 1
    return path

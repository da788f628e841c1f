"""Whether reading ahead pays for a layer (prefetch "next-layer-read").

A prediction that is mostly wrong gives nothing and costs its reads: bytes the layer's own
misses queue behind, on the disk or in the page cache. On the H200 a router that could
not foresee the replayed trace made decode much slower than not reading ahead, while
right predictions gained (README, bench/results/gpu-ea12535-partial). So a layer's
read-ahead is judged by what it gives:
the share of the bytes read ahead for it that its next calls took. Below `MIN_USEFUL`
over `WINDOW` read-aheads, the layer before stops predicting for it for `PAUSE` calls,
then tries again (a model's routing changes with the text).
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 16  # read-aheads judged together
MIN_USEFUL = 0.5  # the least share of bytes read ahead that must be taken
PAUSE = 256  # calls without read-ahead once a window fell short


@dataclass
class AheadGate:
    read: int = 0  # bytes read ahead in this window
    taken: int = 0  # of those, taken by a call
    count: int = 0  # read-aheads in this window
    paused: int = 0  # calls left without read-ahead

    def open(self) -> bool:
        """Whether to predict and read ahead for the layer's next call; a closed gate
        counts the call toward its reopening."""
        if self.count >= WINDOW:
            if self.taken < MIN_USEFUL * self.read:
                self.paused = PAUSE
            self.read = self.taken = self.count = 0
        if self.paused:
            self.paused -= 1
            return False
        return True

    def issued(self, nbytes: int) -> None:
        self.read += nbytes
        self.count += 1

    def took(self, nbytes: int) -> None:
        self.taken += nbytes

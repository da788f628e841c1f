"""Counters of the expert streaming path, per MoE layer; totals are sums of layers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class LayerStats:
    requests: int = 0  # distinct experts asked for, summed over calls
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0  # expert bytes read on misses
    read_seconds: float = 0.0  # wall time of miss reads (parallel reads overlap)
    file_seconds: float = 0.0  # of read_seconds, the file reads (the rest: copies into device memory)
    wait_seconds: float = 0.0  # time the compute waited for expert data
    prefetch_issued: int = 0
    prefetch_bytes: int = 0
    prefetch_used: int = 0  # prefetched experts that a later call of the layer missed on
    ahead_used: int = 0  # of those, read ahead into memory ("next-layer-read") and taken from there
    ahead_paused: int = 0  # calls not read ahead for, recent read-aheads having gone untaken (moe.ahead_gate)
    calls: int = 0
    passes: int = 0  # passes run by calls that needed more experts than slots
    sync_seconds: float = 0.0  # waiting for the router's ids to reach the host
    host_seconds: float = 0.0  # the layer's own host work: ids to slots, lookups (reads apart)
    graph_seconds: float = 0.0  # building and launching the switch module's graph (resident pays it too)
    optimistic: int = 0  # calls of optimistic steps that stood (slots mapped on the device, moe.optimistic)
    redone: int = 0  # optimistic steps run again on the host because this layer missed first

    def add(self, other: LayerStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "hit_rate": self.hit_rate}


@dataclass
class StreamStats:
    layers: dict[str, LayerStats]

    @property
    def total(self) -> LayerStats:
        out = LayerStats()
        for s in self.layers.values():
            out.add(s)
        return out

    def as_dict(self) -> dict:
        return {"total": self.total.as_dict(), "layers": {k: v.as_dict() for k, v in self.layers.items()}}

"""`mlxstore.load`: a read-only mapping name -> mx.array whose values load on first access."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping

import mlx.core as mx

from .residency import ResidencyManager, ResidencyStats
from .store import Store


class LazyTensors(Mapping[str, mx.array]):
    """Tensors of a store, materialized through a ResidencyManager when first looked up.

    `t["x"]` reads only x; `dict(t)` or `t.items()` reads everything; `"x" in t`, `len`,
    iteration and `keys()` read nothing.
    """

    def __init__(self, residency: ResidencyManager):
        self.residency = residency
        self.store: Store = residency.store

    def __getitem__(self, name: str) -> mx.array:
        return self.residency.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.index.tensors)

    def __len__(self) -> int:
        return len(self.store.index.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.store.index.tensors

    @property
    def stats(self) -> ResidencyStats:
        """Live statistics (call `.snapshot()` for a frozen copy, `.reset()` to zero counters)."""
        return self.residency.stats

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LazyTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<mlxstore.LazyTensors {len(self)} tensors, {len(self.residency.resident)} resident>"
        )


def load(
    path: str | os.PathLike,
    *,
    budget: int | str | None = None,
    pin: Iterable[str] = (),
    check: bool = False,
    zero_copy: bool | None = None,
) -> LazyTensors:
    """Open a store as a lazy mapping of its tensors.

    budget: bytes mlxstore may hold materialized (int or "8GB"-style), None for no limit;
    pin: tensors to materialize now and never evict; check: verify checksums on each read;
    zero_copy: see `mlxstore.open`.
    """
    store = Store(path, zero_copy=zero_copy)
    try:
        residency = ResidencyManager(store, budget, check=check)
        for name in pin:
            residency.pin(name)
    except BaseException:
        store.close()
        raise
    return LazyTensors(residency)

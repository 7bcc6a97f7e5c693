"""A least-recently-used cache bounded by a number of items.

Transient (non-archived) versions live only here: when the cache is full, the least recently used
version is dropped and is gone for good, as in the official registry (``--cache_max_items``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"the cache must hold at least one item, got max_items={max_items}")
        self.max_items = max_items
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The item, now the most recently used; None when absent (never stored or evicted)."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def peek(self, key: K) -> V | None:
        """The item without touching its recency (listings must not reorder the cache)."""
        return self._items.get(key)

    def put(self, key: K, item: V) -> list[tuple[K, V]]:
        """Store ``item`` as the most recently used; returns what had to be evicted for it."""
        self._items[key] = item
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.max_items:
            evicted.append(self._items.popitem(last=False))
        return evicted

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def __iter__(self) -> Iterator[K]:
        """Keys from least to most recently used (a snapshot, safe to mutate the cache meanwhile)."""
        return iter(list(self._items))

"""Disjoint sets (union-find) of the integers 0..n-1: connected components grown one link at a
time, for the callers that decide each link from the ones already made (a costly test skipped
when two items are already joined)."""

from __future__ import annotations

import numpy as np

__all__ = ["UnionFind"]


class UnionFind:
    """Union-find with path halving; every set's root is its lowest member."""

    def __init__(self, n: int) -> None:
        self._parent = list(range(int(n)))

    def find(self, a: int) -> int:
        """The root (lowest member) of ``a``'s set."""
        parent = self._parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b``; False when they were joined already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self._parent[max(ra, rb)] = min(ra, rb)
        return True

    def roots(self) -> np.ndarray:
        """``(n,)`` int64: the root of every item (equal roots = one component)."""
        return np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)

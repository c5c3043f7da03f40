"""``uniform``: every block the same size, allocated and freed at random."""

from __future__ import annotations

import random

from pyslab.lab import Workload, WorkloadHeap

from ._sizes import pop_random


class Uniform(Workload):
    """An object cache, the slab allocator's home ground: every block is ``size`` bytes.

    Fills to ``ops // 8`` live blocks, then allocates or frees a random live block with even
    odds. Ends with about ``ops // 8`` live blocks.
    """

    name = "uniform"
    description = "every block 48 bytes (one size class), allocated and freed at random"

    def __init__(self, size: int = 48) -> None:
        if type(size) is not int or size <= 0:
            raise ValueError(f"size must be a positive int, not {size!r}")
        self.size = size

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Fill, then churn at random. Complexity: O(ops)."""
        rng = random.Random(seed)
        live: list[int] = []
        target = max(1, ops // 8)
        for _ in range(ops):
            if len(live) < target or not live or rng.random() < 0.5:
                live.append(heap.alloc(self.size))
            else:
                heap.free(pop_random(rng, live))

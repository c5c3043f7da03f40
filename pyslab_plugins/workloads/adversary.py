"""``adversary``: fill slabs, then free every other block so that no slab can be reclaimed."""

from __future__ import annotations

import random
from typing import Final

from pyslab.lab import Workload, WorkloadHeap

SIZES: Final = (16, 32, 64, 128, 256)
"""Each exactly a default slot size, so that consecutive blocks of a size are adjacent slots."""


class Adversary(Workload):
    """A fragmentation adversary: ``2 * ops // 3`` blocks of sizes drawn from :data:`SIZES`,
    then every other block of each size freed in allocation order.

    Blocks of one size fill their slabs slot after slot, so every slab is left half full: half
    the mapped memory is free and no policy that only releases empty slabs gets any back.
    """

    name = "adversary"
    description = "fragmentation adversary: fill slabs of 5 classes, free every other block"

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Allocate, then free the even-numbered block of each size. Complexity: O(ops)."""
        rng = random.Random(seed)
        by_size: dict[int, list[int]] = {size: [] for size in SIZES}
        for _ in range(max(1, 2 * ops // 3)):
            size = rng.choice(SIZES)
            by_size[size].append(heap.alloc(size))
        for blocks in by_size.values():
            for block in blocks[::2]:
                heap.free(block)

"""``size-mix``: request sizes shaped like a real program's, random lifetimes, some reallocs."""

from __future__ import annotations

import random

from pyslab.lab import Workload, WorkloadHeap

from ._sizes import CAP, pop_random, program_size


class SizeMix(Workload):
    """Sizes from a log-normal mix (median 40 bytes, a tail past 1024), random lifetimes.

    Each call allocates (55 %), frees a random live block (40 %) or grows one by half with
    ``realloc`` (5 %), as strings and lists grow. The live set slowly grows.
    """

    name = "size-mix"
    description = "program-shaped sizes (mostly 16-64 B, a tail past 1 KiB), frees and reallocs"

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Allocate, free and grow at random. Complexity: O(ops)."""
        rng = random.Random(seed)
        live: list[tuple[int, int]] = []  # (block, size)
        for _ in range(ops):
            roll = rng.random()
            if live and roll < 0.05:
                index = rng.randrange(len(live))
                block, size = live[index]
                size = min(CAP, size + size // 2 + 1)
                heap.realloc(block, size)
                live[index] = (block, size)
            elif live and roll < 0.45:
                heap.free(pop_random(rng, live)[0])
            else:
                size = program_size(rng)
                live.append((heap.alloc(size), size))

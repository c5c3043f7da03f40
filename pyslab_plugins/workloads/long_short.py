"""``long-short``: long-lived blocks mixed with short-lived ones."""

from __future__ import annotations

import random
from collections import deque

from pyslab.lab import Workload, WorkloadHeap

from ._sizes import program_size


class LongShort(Workload):
    """One allocation in 8 is long-lived (kept to the end); the others die within 16 calls.

    The long-lived blocks land among short-lived ones and pin their slabs: when the short-lived
    blocks go, those slabs stay mostly free but cannot be reclaimed.
    """

    name = "long-short"
    description = "1 block in 8 lives to the end, the rest die young: long-lived blocks pin slabs"

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Allocate, keep 1 in 8, free the oldest young block past 16. Complexity: O(ops)."""
        rng = random.Random(seed)
        kept: list[int] = []
        young: deque[int] = deque()
        calls = 0
        while calls < ops:
            block = heap.alloc(program_size(rng))
            calls += 1
            if rng.random() < 1 / 8:
                kept.append(block)
            else:
                young.append(block)
            if len(young) > 16:
                heap.free(young.popleft())
                calls += 1

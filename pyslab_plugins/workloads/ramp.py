"""``ramp``: allocate up to a peak, then free everything."""

from __future__ import annotations

import random

from pyslab.lab import Workload, WorkloadHeap

from ._sizes import program_size


class Ramp(Workload):
    """``ops // 2`` allocations of program-shaped sizes, then every block freed in random order.

    Nothing is live at the end, so the final mapped bytes are what the policy keeps of the
    peak: everything under ``first-fit``, a few cached slabs under ``reclaim``.
    """

    name = "ramp"
    description = "ramp up to a peak, then free everything: final mapped bytes show reclamation"

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Allocate, shuffle, free. Complexity: O(ops)."""
        rng = random.Random(seed)
        live = [heap.alloc(program_size(rng)) for _ in range(max(1, ops // 2))]
        rng.shuffle(live)
        for block in live:
            heap.free(block)

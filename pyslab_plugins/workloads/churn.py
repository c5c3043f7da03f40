"""``churn``: steady state, a fixed-size live set where every free is followed by an allocation."""

from __future__ import annotations

import random

from pyslab.lab import Workload, WorkloadHeap

from ._sizes import pop_random, program_size


class Churn(Workload):
    """A server in steady state: ``ops // 10`` live blocks of program-shaped sizes, then pairs of
    (free a random block, allocate a new one) until the budget is spent."""

    name = "churn"
    description = "steady state: a fixed live set of mixed sizes, each free followed by an alloc"

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Fill, then replace random blocks. Complexity: O(ops)."""
        rng = random.Random(seed)
        fill = max(1, ops // 10)
        live = [heap.alloc(program_size(rng)) for _ in range(fill)]
        for _ in range((ops - fill) // 2):
            heap.free(pop_random(rng, live))
            live.append(heap.alloc(program_size(rng)))

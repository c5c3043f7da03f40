"""Measurement 2: allocate a batch of blocks, then free them all in random order.

The random order scatters each slab's free list over the slab (and the owner lookups over
every slab): the pattern that breaks simple free lists. Same contenders as measurement 1.
"""

from __future__ import annotations

import random

from .context import Context
from .heaps import Configuration, Heap, libc_heap, pymem_heap, pyslab_heap
from .loops import batch_contender
from .pairs import LIBC, PYMEM, timing_rows
from .results import Column, Section, Table
from .timing import compare

__all__ = ["SIZE", "batch_configs", "measure"]

SIZE = 64
"""Block size of the batch (the 64-byte class: 64 blocks per 4 KiB slab)."""


def batch_configs(context: Context) -> list[Configuration]:
    """The default and every configuration with an O(1) owner lookup.

    With the O(slabs) walk, one batch of 100,000 random frees takes seconds per round: those
    compositions are measured in their ``dict-lookup+X`` form.
    """
    discovery = context.discovery
    return [discovery.default(), *(c for c in discovery.o1() if not c.is_default)]


def measure(context: Context) -> Section:
    """Time the batch for every configuration, libc and PyMem, interleaved."""
    profile = context.profile
    count = profile.batch_blocks
    section = Section("batch", 2, f"{count:,} allocations, then frees in random order")
    order = list(range(count))
    random.Random(profile.seed).shuffle(order)
    configs = batch_configs(context)
    heaps: list[Heap] = [pyslab_heap(c) for c in configs]
    heaps += [libc_heap(), pymem_heap()]
    settings = context.settings(profile.batch_rounds)
    try:
        timings = compare([batch_contender(h, SIZE, order) for h in heaps], settings)
        for heap in heaps:
            if heap.allocator is not None:
                heap.allocator.validate()
    finally:
        for heap in heaps:
            heap.close()
    rows = timing_rows(timings, {LIBC, PYMEM}, {"size": SIZE})
    for row, timing in zip(rows, timings.values(), strict=True):
        row["batch_ms"] = timing.median_ns * count / 1e6
        row["rounds"] = len(timing.samples_ns)
        row.pop("verdict", None)
    section.tables.append(Table(
        f"{SIZE}-byte blocks: median time per block (alloc + free), batch of {count:,}",
        [
            Column("contender", "contender"),
            Column("median_ns", "per block", "ns"),
            Column("batch_ms", "batch ms", "float"),
            Column("vs_libc", "time / libc", "ratio"),
            Column("vs_pymem", "time / PyMem", "ratio"),
            Column("spread", "spread", "percent"),
            Column("cpu_share", "CPU share", "percent"),
            Column("rounds", "rounds", "int"),
        ],
        rows,
    ))
    left_out = [c.label for c in context.discovery.configurations if c not in configs]
    section.notes.append(
        "Compositions whose free walks every slab (O(slabs)) are measured in their "
        "dict-lookup+X form instead"
        + (f" (left out: {', '.join(left_out)})" if left_out else "")
        + f". A contender stops after {settings.min_rounds} rounds once its batches took "
        f"{settings.budget_ns / 1e9:.0f} s."
    )
    return section

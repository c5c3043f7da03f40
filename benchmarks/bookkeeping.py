"""Measurement 5: the Python-side bytes pyslab spends on bookkeeping per byte of slab memory.

``tracemalloc`` traces every Python allocation while an allocator builds the profile's number
of full slabs (100,000 in a full run); the traces still alive at the end whose allocating line
lies in ``pyslab`` or in the module of one of the configuration's policies are the allocator's
bookkeeping (slab objects, their fields, the class and lookup tables). The blocks' addresses
are not kept by the benchmark, so no per-block Python int is counted.

Target: at most 3% of the slab bytes mapped.
"""

from __future__ import annotations

import gc
import inspect
import linecache
import os
import tracemalloc
from dataclasses import dataclass

import pyslab

from .context import Context
from .heaps import Configuration, build_full_heap
from .results import Column, Section, Table, Target

__all__ = ["SIZE", "Weight", "measure", "owned_by_allocator"]

SIZE = 512
"""Block size: 8 blocks per 4 KiB slab keeps 100,000 slabs to 800,000 calls; bookkeeping is
per slab (the ``live`` bitmap is indexed by word offset, so its size barely depends on it)."""
TOP_LINES = 6


def owned_by_allocator(allocator: pyslab.SlabAllocator) -> list[str]:
    """Directories of the code whose allocations count as the allocator's bookkeeping."""
    folders = {os.path.dirname(inspect.getfile(pyslab))}
    for policy in allocator.policy.policies:
        folders.add(os.path.dirname(inspect.getfile(type(policy))))
    return sorted(folders)


@dataclass(frozen=True)
class Weight:
    """The bookkeeping of one configuration at the end of the build."""

    label: str
    slabs: int
    mapped_bytes: int
    bookkeeping_bytes: int
    traced_total: int
    top_lines: list[dict[str, object]]

    @property
    def per_slab(self) -> float:
        """Bookkeeping bytes per slab."""
        return self.bookkeeping_bytes / self.slabs

    @property
    def fraction(self) -> float:
        """Bookkeeping bytes per byte mapped."""
        return self.bookkeeping_bytes / self.mapped_bytes

    def row(self) -> dict[str, object]:
        """The table row (and JSON record)."""
        return {
            "contender": self.label, "slabs": self.slabs, "mapped_bytes": self.mapped_bytes,
            "bookkeeping_bytes": self.bookkeeping_bytes, "per_slab": self.per_slab,
            "fraction": self.fraction, "traced_total": self.traced_total,
            "top_lines": self.top_lines,
        }


def _weigh(config: Configuration, slabs: int) -> Weight:
    gc.collect()
    tracemalloc.start()
    try:
        heap, _ = build_full_heap(config, slabs, SIZE, keep_addresses=False)
        try:
            gc.collect()
            snapshot = tracemalloc.take_snapshot()
            traced_total, _peak = tracemalloc.get_traced_memory()
            assert heap.allocator is not None
            folders = owned_by_allocator(heap.allocator)
            mapped = heap.allocator.page_source.mapped_bytes
            count = len(heap.allocator.slabs())
        finally:
            heap.close()
    finally:
        tracemalloc.stop()
    ours = snapshot.filter_traces(
        [tracemalloc.Filter(True, os.path.join(folder, "*")) for folder in folders]
    )
    stats = ours.statistics("lineno")
    top: list[dict[str, object]] = []
    for stat in stats[:TOP_LINES]:
        frame = stat.traceback[0]
        top.append({
            "line": f"{os.path.relpath(frame.filename)}:{frame.lineno}",
            "code": linecache.getline(frame.filename, frame.lineno).strip(),
            "bytes": stat.size,
            "per_slab": stat.size / count,
        })
    return Weight(config.label, count, mapped, sum(s.size for s in stats), traced_total, top)


def measure(context: Context) -> Section:
    """Build the slabs under each single-policy configuration and weigh the bookkeeping."""
    slabs = context.profile.bookkeeping_slabs
    section = Section("memory", 5, f"Python bookkeeping per byte mapped, at {slabs:,} slabs")
    discovery = context.discovery
    every = context.profile.bookkeeping_every_single
    configs = [c for c in discovery.singles() if every or c.is_default or c.o1_free]
    weights = [_weigh(config, slabs) for config in configs]
    section.tables.append(Table(f"{SIZE}-byte blocks, every slab full", [
        Column("contender", "configuration"),
        Column("slabs", "slabs", "int"),
        Column("mapped_bytes", "mapped", "bytes"),
        Column("bookkeeping_bytes", "bookkeeping", "bytes"),
        Column("per_slab", "bytes / slab", "float"),
        Column("fraction", "bookkeeping / mapped", "percent"),
    ], [w.row() for w in weights]))
    worst = max(weights, key=lambda w: w.fraction)
    section.tables.append(Table(f"where {worst.label}'s bookkeeping is allocated", [
        Column("line", "allocating line"),
        Column("code", "code"),
        Column("bytes", "bytes", "bytes"),
        Column("per_slab", "bytes / slab", "float"),
    ], worst.top_lines))
    for weight in weights:
        fraction = weight.fraction
        section.targets.append(Target(
            f"{weight.label}: bookkeeping at most 3% of mapped bytes",
            fraction <= 0.03,
            f"{fraction:.2%} ({weight.per_slab:.0f} bytes per slab)"
            + ("" if fraction <= 0.03 else f"; over by {fraction / 0.03:.2f}x"),
        ))
    section.notes.append(
        "Counted: tracemalloc traces alive after the build whose allocating line is in pyslab/ "
        "or in a policy's module; the page source's mapped bytes are the denominator. "
        + ("Measured: every single policy." if every else
           "Measured: the default and each single policy with its own owner lookup table "
           "(building 100,000 slabs under tracemalloc takes about 20 s each); `--quick` "
           "measures every single policy, at fewer slabs.")
    )
    return section

"""Measurement 6: fill the heap with small blocks, free them all, and see what stays mapped.

Each configuration fills the profile's byte count (100 MiB in a full run) with 64-byte
blocks, then frees every block in random order. Mapped bytes (the page source's count) and the
process RSS (``/proc/self/statm``) are read before, at the peak and after. libc runs the same
fill and free for comparison (its mapped bytes are not observable; its RSS is).

Targets: with ``reclaim``, at most 1% of the peak left mapped by the page source, and at most
1% of the growth of the process's anonymous mappings (``/proc/self/maps``: slabs, and the
memory the interpreter took for pyslab's own bookkeeping) left after the frees.
"""

from __future__ import annotations

import ctypes
import gc
import random
from array import array
from dataclasses import dataclass

from .context import Context
from .heaps import (
    Configuration,
    anonymous_mapped_bytes,
    filling_allocator,
    libc_heap,
    release_libc_free_memory,
    rss_bytes,
)
from .results import Column, Section, Table, Target
from .timing import time_once

__all__ = ["MAX_PAIRS", "SIZE", "measure", "reclaim_pairs"]

SIZE = 64
MAX_PAIRS = 3
FILL = 0xA5
memset = ctypes.memset


@dataclass(frozen=True)
class Outcome:
    """What one contender left behind."""

    label: str
    reclaims: bool
    peak_mapped: int | None
    left_mapped: int | None
    rss_peak: int
    rss_left: int
    free_ns: int
    anon_peak: int
    """Growth of the process's anonymous mappings at the peak (``/proc/self/maps``)."""
    anon_left: int
    """Growth left after the frees, Python-side memory included."""

    def row(self) -> dict[str, object]:
        """The table row."""
        left = (
            None if self.peak_mapped is None or self.left_mapped is None
            else self.left_mapped / self.peak_mapped
        )
        return {
            "contender": self.label, "peak_mapped": self.peak_mapped,
            "left_mapped": self.left_mapped, "left_fraction": left,
            "rss_peak": self.rss_peak, "rss_left": self.rss_left, "free_s": self.free_ns / 1e9,
            "anon_peak": self.anon_peak, "anon_left": self.anon_left,
            "anon_fraction": self.anon_left / self.anon_peak if self.anon_peak > 0 else None,
        }


def reclaim_pairs(context: Context) -> list[tuple[Configuration, Configuration]]:
    """(X, X+reclaim) for each O(1)-lookup X, so the only difference is ``reclaim``."""
    by_names = {c.names: c for c in context.discovery.configurations}
    pairs = []
    for config in context.discovery.o1(exclude=["reclaim"]):
        if len(config.names) == 2:
            partner = by_names.get((*config.names, "reclaim"))
            if partner is not None:
                pairs.append((config, partner))
    return pairs[:MAX_PAIRS]


def _pyslab(config: Configuration, count: int, seed: int) -> Outcome:
    addresses = array("Q", bytes(8 * count))  # sized before the baseline RSS is read
    gc.collect()
    release_libc_free_memory()
    before = rss_bytes()
    allocator, filler = filling_allocator(config)
    anon_before = anonymous_mapped_bytes()  # after what a page source reserves up front
    try:
        alloc, free = allocator.alloc, allocator.free
        for i in range(count):
            address = alloc(SIZE)
            memset(address, FILL, SIZE)  # a user writes what it allocates: pages get touched
            addresses[i] = address
        filler.filling = False
        peak_mapped = allocator.page_source.mapped_bytes
        rss_peak = rss_bytes() - before
        anon_peak = anonymous_mapped_bytes() - anon_before
        random.Random(seed).shuffle(addresses)

        def free_all() -> None:
            for address in addresses:
                free(address)

        free_ns = time_once(free_all)
        gc.collect()
        release_libc_free_memory()
        left_mapped = allocator.page_source.mapped_bytes
        rss_left = rss_bytes() - before
        anon_left = anonymous_mapped_bytes() - anon_before
        allocator.validate()
    finally:
        allocator.close()
    return Outcome(config.label, "reclaim" in config.names, peak_mapped, left_mapped,
                   rss_peak, rss_left, free_ns, anon_peak, anon_left)


def _libc(count: int, seed: int) -> Outcome:
    heap = libc_heap()
    addresses = array("Q", bytes(8 * count))
    gc.collect()
    release_libc_free_memory()
    before = rss_bytes()
    anon_before = anonymous_mapped_bytes()
    alloc, free = heap.alloc, heap.free
    for i in range(count):
        address = alloc(SIZE)
        memset(address, FILL, SIZE)
        addresses[i] = address
    rss_peak = rss_bytes() - before
    anon_peak = anonymous_mapped_bytes() - anon_before
    random.Random(seed).shuffle(addresses)

    def free_all() -> None:
        for address in addresses:
            free(address)

    free_ns = time_once(free_all)
    release_libc_free_memory()
    return Outcome(heap.name, False, None, None, rss_peak, rss_bytes() - before, free_ns,
                   anon_peak, anonymous_mapped_bytes() - anon_before)


def measure(context: Context) -> Section:
    """Fill, free in random order, and read mapped bytes and RSS for each pair and libc."""
    total = context.profile.reclaim_bytes
    count = total // SIZE
    section = Section(
        "reclaim", 6, f"reclamation: fill {total >> 20} MiB of {SIZE}-byte blocks, free all"
    )
    pairs = reclaim_pairs(context)
    if not pairs:
        section.notes.append("skipped: no O(1)-lookup policy composes with reclaim here.")
        return section
    outcomes = [
        _pyslab(config, count, context.profile.seed) for pair in pairs for config in pair
    ]
    outcomes.append(_libc(count, context.profile.seed))
    section.tables.append(Table(f"{count:,} blocks freed in random order", [
        Column("contender", "contender"),
        Column("peak_mapped", "mapped at peak", "bytes"),
        Column("left_mapped", "mapped after", "bytes"),
        Column("left_fraction", "after / peak", "percent"),
        Column("rss_peak", "RSS growth at peak", "bytes"),
        Column("rss_left", "RSS growth after", "bytes"),
        Column("free_s", "free all (s)", "float"),
        Column("anon_peak", "process anon growth at peak", "bytes"),
        Column("anon_left", "process anon growth after", "bytes"),
        Column("anon_fraction", "process after / peak", "percent"),
    ], [o.row() for o in outcomes]))
    for outcome in outcomes:
        if outcome.reclaims and outcome.peak_mapped and outcome.left_mapped is not None:
            fraction = outcome.left_mapped / outcome.peak_mapped
            section.targets.append(Target(
                f"{outcome.label}: at most 1% of the peak left mapped",
                fraction <= 0.01,
                f"{fraction:.3%} ({outcome.left_mapped:,} of {outcome.peak_mapped:,} bytes)",
            ))
            if outcome.anon_peak > outcome.peak_mapped // 2:  # else: a reserved region
                process = max(outcome.anon_left, 0) / outcome.anon_peak
                section.targets.append(Target(
                    f"{outcome.label}: at most 1% of the process's anonymous-mapping growth left "
                    "(Python-side memory included)",
                    process <= 0.01,
                    f"{process:.2%} ({outcome.anon_left:,} of {outcome.anon_peak:,} bytes)",
                ))
    slow = [c.label for c in context.discovery.configurations if not c.o1_free]
    section.notes.append(
        "Left out: configurations whose free walks every slab (" + ", ".join(slow) + "): "
        f"{count:,} random frees over {total // 4096:,} slabs would take minutes. "
        "The fill writes every block; it maps a new slab whenever one fills (see measurement "
        "4), then the configuration's own select_slab takes over for the frees. RSS growth is "
        "relative to just before the fill, read after glibc's malloc_trim(0) (the "
        "benchmark's address array is allocated before). Process anonymous mappings "
        "(/proc/self/maps): growth from just after the allocator is built, so a region "
        "reserved up front (address-mask, the arena) is not counted as growth; such a "
        "configuration gets no process-wide target."
    )
    return section

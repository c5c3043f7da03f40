"""Measurement 4: the cost of ``free`` as the number of live slabs grows.

At each level (1, 100, 10,000, 100,000 full slabs of 512-byte blocks) every contender frees a
random live block and allocates a replacement, over and over. A large working set costs cache
and TLB misses whatever the algorithm, so libc ``malloc``+``free`` runs the same churn over
the same number of live bytes beside pyslab, and each configuration's growth (time at the
largest level / time at 1 slab) is compared with libc's growth.

Target: configurations with an O(1) owner lookup grow at most 1.2x as much as libc (the
default among them).
"""

from __future__ import annotations

import random

from .context import Context
from .heaps import Configuration, Heap, build_full_heap, libc_heap
from .loops import churn_contender
from .results import Column, Section, Table, Target
from .timing import Timing, compare

__all__ = ["MAX_CONFIGS", "VALIDATE_UP_TO", "measure", "scaling_configs"]

MAX_CONFIGS = 8
"""O(1) configurations measured at most (each holds every level's slabs in memory)."""
VALIDATE_UP_TO = 100
"""Heaps of at most this many slabs are validated after the churn (validate is O(slabs))."""
LIBC = "libc malloc/free"


def scaling_configs(context: Context) -> list[Configuration]:
    """The default and the O(1) configurations, reclaim and hardening out (but in the default).

    Under churn no slab ever empties, so ``+reclaim`` compositions would repeat their base;
    hardening policies are measured by measurement 7 (and ``debug``'s free-list check walks
    every slab of a class whenever it has no current slab, which makes building 100,000 slabs
    take minutes).
    """
    discovery = context.discovery
    left_out = ["reclaim", *discovery.hardening()]
    o1 = [c for c in discovery.o1(exclude=left_out) if not c.is_default]
    return [discovery.default(), *o1[:MAX_CONFIGS]]


def _level(
    context: Context, configs: list[Configuration], slabs: int
) -> tuple[dict[str, Timing], int]:
    """Build every heap at ``slabs`` full slabs, churn them interleaved, tear them down."""
    size = context.profile.churn_size
    heaps: list[Heap] = []
    contenders = []
    try:
        blocks_count = 0
        for config in configs:
            heap, blocks = build_full_heap(config, slabs, size)
            heaps.append(heap)
            blocks_count = blocks_count or len(blocks)
            rng = random.Random(context.profile.seed)
            contenders.append(churn_contender(heap, size, blocks, rng))
        libc = libc_heap()
        libc_blocks = [libc.alloc(size) for _ in range(blocks_count)]

        def free_libc_blocks() -> None:
            for block in libc_blocks:
                libc.free(block)

        heaps.append(Heap(libc.name, libc.alloc, libc.free, free_libc_blocks))
        rng = random.Random(context.profile.seed)
        contenders.append(churn_contender(libc, size, libc_blocks, rng, LIBC))
        timings = compare(contenders, context.settings())
        if slabs <= VALIDATE_UP_TO:
            for heap in heaps:
                if heap.allocator is not None:
                    heap.allocator.validate()
    finally:
        for heap in heaps:
            heap.close()
    return timings, blocks_count


def measure(context: Context) -> Section:
    """Churn at every level; report each contender's growth against libc's."""
    levels = context.profile.slab_levels
    size = context.profile.churn_size
    section = Section(
        "scaling", 4, f"free cost as live slabs grow ({size}-byte blocks, random free+realloc)"
    )
    configs = scaling_configs(context)
    per_level = Table("median time per random free + realloc", [
        Column("slabs", "live slabs", "int"),
        Column("live_bytes", "live bytes", "bytes"),
        Column("contender", "contender"),
        Column("median_ns", "per free+alloc", "ns"),
        Column("vs_libc", "time / libc", "ratio"),
        Column("spread", "spread", "percent"),
        Column("cpu_share", "CPU share", "percent"),
    ])
    curves: dict[str, dict[str, float]] = {}
    by_level: dict[int, dict[str, Timing]] = {}
    for slabs in levels:
        timings, blocks = _level(context, configs, slabs)
        by_level[slabs] = timings
        for name, timing in timings.items():
            per_level.rows.append({
                "slabs": slabs, "live_bytes": blocks * size, "contender": name,
                **timing.to_dict(), "vs_libc": timing.ratio_to(timings[LIBC]),
            })
            curves.setdefault(name, {})[str(slabs)] = timing.median_ns
    section.tables.append(per_level)
    low, high = levels[0], levels[-1]
    libc_growth = by_level[high][LIBC].median_ns / by_level[low][LIBC].median_ns
    growth = Table(f"growth from {low:,} to {high:,} slabs", [
        Column("contender", "contender"),
        Column("low_ns", f"at {low:,}", "ns"),
        Column("high_ns", f"at {high:,}", "ns"),
        Column("growth", "growth", "ratio"),
        Column("vs_libc_growth", "growth / libc's", "ratio"),
        Column("lookup", "owner lookup"),
    ])
    for name in by_level[low]:
        grow = by_level[high][name].median_ns / by_level[low][name].median_ns
        config = next((c for c in configs if c.label == name), None)
        growth.rows.append({
            "contender": name, "low_ns": by_level[low][name].median_ns,
            "high_ns": by_level[high][name].median_ns, "growth": grow,
            "vs_libc_growth": grow / libc_growth,
            "lookup": "-" if config is None else
            ("O(1) " if config.o1_free else "O(slabs) ") + config.find_owner_by,
        })
        if config is not None and config.o1_free:
            relative = grow / libc_growth
            section.targets.append(Target(
                f"{name}: growth 1 -> {high:,} slabs at most 1.2x libc's growth",
                relative <= 1.2,
                f"{grow:.2f}x vs libc's {libc_growth:.2f}x: {relative:.2f}x"
                + ("" if relative <= 1.2 else f" (over by {relative / 1.2:.2f}x)"),
            ))
    section.tables.append(growth)
    section.plot = {"curves": curves}
    section.notes.append(
        "Heaps are built by allocating until the slab count is reached, with a benchmark-only "
        "policy last in the composition that maps a new slab whenever the current one fills "
        "(first-fit's select_slab walks every full slab first: O(N^2) to build N slabs) and "
        "then hands select_slab back to the configuration. The heap is the same; only its "
        "construction is faster."
    )
    section.notes.append(
        f"Per-op ops are calibrated per contender (about {context.profile.batch_ns / 1e6:.0f} ms "
        "a batch): an O(slabs) free at the largest level runs only a few ops per batch."
    )
    return section

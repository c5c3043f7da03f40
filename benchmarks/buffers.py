"""Measurement 3: create and drop a slab-backed 64-byte ctypes buffer vs ``create_string_buffer``.

Target: at most 2x the cost of ``ctypes.create_string_buffer(64)``, with
``pyslab.buffers(heap).create_string_buffer`` (the function ``pyslab.install()`` puts in its
place), for the default configuration and for the fastest one.

Beside each buffer, the same configuration's alloc+free pair of 64 bytes is timed alone, in the
same interleaved rounds: the buffer's time minus the pair's is what the interop layer itself
costs (the ctypes object over the block, the keeper that frees it, the set of live blocks,
zeroing). The pair is a floor no buffer can go under: where it alone is over 2x
``create_string_buffer``, the target cannot be met above the core.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from itertools import repeat

import pyslab

from .context import Context
from .results import Column, Section, Table, Target
from .timing import Contender, compare

__all__ = ["SIZE", "TARGET", "measure"]

SIZE = 64
TARGET = 2.0
"""A slab-backed buffer may cost at most this many times ``create_string_buffer(SIZE)``."""
BASELINE = "ctypes.create_string_buffer"
PAIR = " (alloc+free pair alone)"
"""Suffix of the contender that times a configuration's bare pair."""


def _contender(name: str, make: Callable[[int], object]) -> Contender:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            make(SIZE)  # the buffer is dropped at once: its refcount falls to zero

    return Contender(name, run)


def _pair_contender(name: str, allocator: pyslab.SlabAllocator) -> Contender:
    def run(n: int) -> None:
        alloc, free = allocator.alloc, allocator.free
        for _ in repeat(None, n):
            free(alloc(SIZE))

    return Contender(name, run)


def measure(context: Context) -> Section:
    """Time buffer creation+drop, and the bare pair, for the default and each single-policy
    configuration."""
    section = Section("buffer", 3, "slab-backed 64-byte ctypes buffer vs create_string_buffer")
    configs = context.discovery.singles()
    allocators = [pyslab.SlabAllocator(policy=c.spec) for c in configs]
    pair_heaps = [pyslab.SlabAllocator(policy=c.spec) for c in configs]
    try:
        contenders = [_contender(BASELINE, ctypes.create_string_buffer)]
        for config, allocator, pair_heap in zip(configs, allocators, pair_heaps, strict=True):
            make: Callable[[int], object] = pyslab.buffers(allocator).create_string_buffer
            contenders.append(_contender(config.label, make))
            contenders.append(_pair_contender(config.label + PAIR, pair_heap))
        timings = compare(contenders, context.settings())
        gc.collect()
        for config, allocator in zip(configs, allocators, strict=True):
            left = allocator.stats().live_blocks
            if left:
                section.notes.append(
                    f"{config.label}: {left} blocks still live after every buffer was dropped "
                    "(freed only by a later collection, or leaked)"
                )
            allocator.validate()
    finally:
        for allocator in allocators + pair_heaps:
            allocator.close()
    base = timings[BASELINE]
    rows: list[dict[str, object]] = [
        {"contender": BASELINE, **base.to_dict(), "vs_ctypes": 1.0}
    ]
    for config in configs:
        timing, pair = timings[config.label], timings[config.label + PAIR]
        ratio = timing.ratio_to(base)
        rows.append({
            "contender": config.label, **timing.to_dict(), "vs_ctypes": ratio,
            "target": "met" if ratio <= TARGET else f"needs {ratio / TARGET:.1f}x less",
            "pair_ns": pair.median_ns, "pair_vs_ctypes": pair.ratio_to(base),
            "layer_ns": timing.median_ns - pair.median_ns,
            "pair": pair.to_dict(),
        })
    section.tables.append(Table(
        f"median time to create and drop one {SIZE}-byte buffer (target: at most {TARGET:g}x "
        "create_string_buffer)",
        [
            Column("contender", "contender"),
            Column("median_ns", "per buffer", "ns"),
            Column("vs_ctypes", "time / create_string_buffer", "ratio"),
            Column("target", f"vs target {TARGET:g}x"),
            Column("pair_ns", "of which alloc+free", "ns"),
            Column("pair_vs_ctypes", "pair / create_string_buffer", "ratio"),
            Column("layer_ns", "interop layer", "ns"),
            Column("spread", "spread", "percent"),
            Column("cpu_share", "CPU share", "percent"),
        ],
        rows,
    ))
    default = configs[0]
    fastest = min(configs, key=lambda c: timings[c.label].median_ns)
    for which, config in (("default", default), ("fastest", fastest)):
        ratio = timings[config.label].ratio_to(base)
        floor = timings[config.label + PAIR].ratio_to(base)
        section.targets.append(Target(
            f"{which} configuration: buffer at most {TARGET:g}x create_string_buffer's cost",
            ratio <= TARGET,
            f"{config.label}: {ratio:.2f}x"
            + ("" if ratio <= TARGET else f"; needs {ratio / TARGET:.1f}x less time")
            + f" (its alloc+free pair alone: {floor:.2f}x)",
        ))
    return section

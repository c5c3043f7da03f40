"""Measurement 3: create and drop a slab-backed 64-byte ctypes buffer vs ``create_string_buffer``.

Target: at most 1.5x the cost of ``ctypes.create_string_buffer(64)``, with
``pyslab.buffers(heap).create_string_buffer`` (the function ``pyslab.install()`` puts in its
place).
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

__all__ = ["SIZE", "measure"]

SIZE = 64
BASELINE = "ctypes.create_string_buffer"


def _contender(name: str, make: Callable[[int], object]) -> Contender:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            make(SIZE)  # the buffer is dropped at once: its refcount falls to zero

    return Contender(name, run)


def measure(context: Context) -> Section:
    """Time buffer creation+drop for the default and each single-policy configuration."""
    section = Section("buffer", 3, "slab-backed 64-byte ctypes buffer vs create_string_buffer")
    configs = context.discovery.singles()
    allocators = [pyslab.SlabAllocator(policy=c.spec) for c in configs]
    try:
        contenders = [_contender(BASELINE, ctypes.create_string_buffer)]
        for config, allocator in zip(configs, allocators, strict=True):
            make: Callable[[int], object] = pyslab.buffers(allocator).create_string_buffer
            contenders.append(_contender(config.label, make))
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
        for allocator in allocators:
            allocator.close()
    base = timings[BASELINE]
    rows: list[dict[str, object]] = []
    for name, timing in timings.items():
        rows.append({
            "contender": name, **timing.to_dict(), "vs_ctypes": timing.ratio_to(base),
        })
    section.tables.append(Table(
        f"median time to create and drop one {SIZE}-byte buffer",
        [
            Column("contender", "contender"),
            Column("median_ns", "per buffer", "ns"),
            Column("vs_ctypes", "time / create_string_buffer", "ratio"),
            Column("spread", "spread", "percent"),
            Column("cpu_share", "CPU share", "percent"),
        ],
        rows,
    ))
    default = configs[0]
    fastest = min(configs, key=lambda c: timings[c.label].median_ns)
    for which, config in (("default", default), ("fastest", fastest)):
        ratio = timings[config.label].ratio_to(base)
        section.targets.append(Target(
            f"{which} configuration: buffer at most 1.5x create_string_buffer's cost",
            ratio <= 1.5,
            f"{config.label}: {ratio:.2f}x"
            + ("" if ratio <= 1.5 else f"; needs {ratio / 1.5:.1f}x less time"),
        ))
    return section

"""Measurement 1: an alloc+free pair of 16, 64 and 512 bytes, every configuration vs libc and PyMem.

Targets, against libc ``malloc``+``free`` through ctypes, as speed (libc's time / pyslab's):
the fastest thread-safe configuration at least 1.3x as fast, the default configuration at least
1.0x, ``dict-lookup`` (locked, no front end) at least 0.75x.
"""

from __future__ import annotations

from .context import Context
from .heaps import Heap, libc_heap, pymem_heap, pyslab_heap
from .loops import pair_contender, resident_blocks
from .results import Column, Section, Table, Target
from .timing import Timing, compare

__all__ = ["COLUMNS", "measure", "timing_rows"]

LIBC = "libc malloc/free"
PYMEM = "PyMem_Malloc/Free"

COLUMNS = [
    Column("size", "bytes", "int"),
    Column("contender", "contender"),
    Column("median_ns", "per pair", "ns"),
    Column("vs_libc", "time / libc", "ratio"),
    Column("vs_pymem", "time / PyMem", "ratio"),
    Column("spread", "spread", "percent"),
    Column("cpu_share", "CPU share", "percent"),
    Column("verdict", "vs targets"),
]


FASTEST_SPEED = 1.3
"""The fastest thread-safe configuration: at least this many times as fast as libc."""
DEFAULT_SPEED = 1.0
"""The default configuration: at least as fast as libc."""
LOCKED_SPEED = 0.75
"""``dict-lookup``, locked and without a front end: at least this fraction of libc's speed."""


def verdict(ratio: float) -> str:
    """A time ratio to libc as speed: ``1.30x as fast``, ``0.40x as fast``."""
    return f"{1 / ratio:.2f}x as fast" if ratio > 0 else "-"


def timing_rows(
    timings: dict[str, Timing], baselines: set[str], extra: dict[str, object]
) -> list[dict[str, object]]:
    """One row per contender with its ratios to libc and PyMem (when both were timed)."""
    libc, pymem = timings.get(LIBC), timings.get(PYMEM)
    rows: list[dict[str, object]] = []
    for name, timing in timings.items():
        row: dict[str, object] = {**extra, "contender": name, **timing.to_dict()}
        if libc is not None:
            ratio = timing.ratio_to(libc)
            row["vs_libc"] = ratio
            row["verdict"] = "baseline" if name in baselines else verdict(ratio)
        if pymem is not None:
            row["vs_pymem"] = timing.ratio_to(pymem)
        rows.append(row)
    return rows


def measure(context: Context) -> Section:
    """Time the pairs; report per size which configurations meet the targets."""
    section = Section("pairs", 1, "alloc+free pair vs libc and PyMem through ctypes")
    configs = context.discovery.configurations
    heaps: list[Heap] = [pyslab_heap(c) for c in configs]
    baselines = [libc_heap(), pymem_heap()]
    settings = context.settings()
    table = Table("median time per alloc+free pair", COLUMNS)
    bars: dict[str, dict[str, float]] = {}
    try:
        for size in context.profile.pair_sizes:
            everyone = [*heaps, *baselines]
            with resident_blocks(everyone, size):
                timings = compare([pair_contender(h, size) for h in everyone], settings)
            rows = timing_rows(timings, {LIBC, PYMEM}, {"size": size})
            table.rows.extend(rows)
            bars[str(size)] = {
                c.label: timings[c.label].ratio_to(timings[LIBC]) for c in configs
            }
            section.targets.extend(_targets(context, size, timings))
        for heap in heaps:
            if heap.allocator is not None:
                heap.allocator.validate()
    finally:
        for heap in heaps:
            heap.close()
    section.tables.append(table)
    section.plot = {"ratios_to_libc": bars}
    unsafe = [c.label for c in configs if not c.thread_safe]
    section.notes.append(
        "Ratios are time / libc time: 0.50x means twice as fast. Every configuration runs "
        "under the allocator's lock (thread-safe)"
        + (f", except: {', '.join(unsafe)}." if unsafe else ".")
    )
    section.notes.append(
        "Each heap holds one other live block of the size while pairs run (the steady state "
        "of a class in use); on an empty class every pair also moves the slab to EMPTY and "
        "back (`python -m benchmarks.hotpath` shows that path)."
    )
    section.notes.append(
        "spread: (slowest - fastest round) / median. CPU share: CPU time / wall time of the "
        "timed batches; below 100% other processes ran meanwhile (the machine was busy)."
    )
    section.notes.append(
        f"{len(configs)} configurations discovered at run time from pyslab.policies(): "
        f"{', '.join(sorted(context.discovery.policies))}."
    )
    section.notes.extend(f"not measured: {s}" for s in context.discovery.skipped)
    return section


def _speed_target(label: str, config: str, ratio: float, speed: float) -> Target:
    """``config`` at least ``speed`` times as fast as libc (``ratio``: its time / libc's)."""
    achieved = 1 / ratio if ratio > 0 else float("inf")
    met = achieved >= speed
    return Target(
        f"{label} at least {speed:.2f}x as fast as libc",
        met,
        f"{config}: {achieved:.2f}x as fast ({ratio:.2f}x libc's time)"
        + ("" if met else f"; needs {speed / achieved:.2f}x less time"),
    )


def _targets(context: Context, size: int, timings: dict[str, Timing]) -> list[Target]:
    libc = timings[LIBC]
    safe = [c for c in context.discovery.configurations if c.thread_safe]
    fastest = min(safe, key=lambda c: timings[c.label].median_ns)
    default = context.discovery.default()
    targets = [
        _speed_target(f"{size} B: fastest thread-safe configuration", fastest.label,
                      timings[fastest.label].ratio_to(libc), FASTEST_SPEED),
        _speed_target(f"{size} B: default configuration", default.label,
                      timings[default.label].ratio_to(libc), DEFAULT_SPEED),
    ]
    locked = next((c for c in context.discovery.configurations if c.spec == "dict-lookup"), None)
    if locked is not None:
        targets.append(_speed_target(f"{size} B: dict-lookup", locked.label,
                                     timings[locked.label].ratio_to(libc), LOCKED_SPEED))
    return targets

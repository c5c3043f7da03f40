"""Where ``SlabAllocator.alloc``/``free`` spend their time: ``python -m benchmarks.hotpath``.

Three views for whoever optimizes the core:

1. ``cProfile`` over alloc+free pairs of one configuration: the functions the hot path calls
   and their own time (cProfile's per-call overhead inflates small functions alike, so read
   the counts and the order, not the absolute times).
2. The lines of pyslab and plugin code one pair executes (``sys.settrace`` line counts), with
   their source: every line is at least tens of nanoseconds of interpreter work.
3. The cost of each primitive the hot path is made of, timed alone with :mod:`benchmarks.timing`
   (an ``RLock`` round trip, a slot attribute write, a free-list word read, the ``live``
   bitmap update on a 512-bit int, a dict probe, a bound-method call...), beside one
   alloc+free pair, so the sum shows what the pair pays for.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import linecache
import os
import pstats
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import repeat
from types import FrameType
from typing import Any

import pyslab

from .timing import Contender, Settings, compare

__all__ = ["line_counts", "main", "primitives", "profile_pairs"]


def line_counts(
    policy: str | None, size: int, count: int, *, resident: bool = False
) -> list[tuple[str, float, str]]:
    """Lines of pyslab and plugin code one alloc+free pair executes: (where, times per pair, code).

    Counted with ``sys.settrace`` line events over ``count`` pairs, after one warm-up pair. A
    Python line costs tens of nanoseconds at the least, so the count is a floor of the cost.
    """
    roots = (os.path.dirname(inspect.getfile(pyslab)),)
    counts: Counter[tuple[str, int]] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:  # sys.settrace's signature
        filename = frame.f_code.co_filename
        if not filename.startswith(roots) and "plugins" not in filename:
            return None
        if event == "line":
            counts[filename, frame.f_lineno] += 1
        return tracer

    with pyslab.SlabAllocator(policy=policy) as allocator:
        alloc, free = allocator.alloc, allocator.free
        if resident:
            alloc(size)  # the class's slab stays PARTIAL: no EMPTY transition per pair
        free(alloc(size))
        sys.settrace(tracer)
        try:
            for _ in repeat(None, count):
                free(alloc(size))
        finally:
            sys.settrace(None)
    return [
        (f"{os.path.relpath(filename)}:{line}", hits / count,
         linecache.getline(filename, line).strip())
        for (filename, line), hits in sorted(counts.items())
    ]


def profile_pairs(policy: str | None, size: int, count: int, *, resident: bool = False) -> str:
    """cProfile's table (own time, top 15) for ``count`` alloc+free pairs under ``policy``."""
    with pyslab.SlabAllocator(policy=policy) as allocator:
        alloc, free = allocator.alloc, allocator.free
        if resident:
            alloc(size)
        free(alloc(size))
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in repeat(None, count):
            free(alloc(size))
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


class _Slots:
    __slots__ = ("live", "used")

    def __init__(self) -> None:
        self.used = 0
        self.live = (1 << 511) | 1


def _loop(body: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            body()

    return run


def primitives(policy: str | None, size: int, settings: Settings) -> dict[str, float]:
    """Median ns per call of each primitive, the empty loop subtracted, and of one pair."""
    lock = threading.RLock()
    record = _Slots()
    table = {i << 12: i for i in range(10_000)}
    mask = ~4095
    allocator = pyslab.SlabAllocator(policy=policy)
    alloc, free = allocator.alloc, allocator.free
    block = alloc(size)
    words = memoryview(bytes(8) * 8).cast("Q")

    def lock_round_trip() -> None:
        lock.acquire()
        lock.release()

    def attribute_write() -> None:
        record.used = 1

    def bitmap_toggle() -> None:
        record.live ^= 1 << 300

    def dict_probe() -> None:
        table.get((5 << 12) + 64 & mask)

    def word_read() -> None:
        words[3]

    def method_call() -> None:
        allocator.owns(0)

    bodies: dict[str, Callable[[], object]] = {
        "empty loop": lambda: None,
        "RLock acquire+release": lock_round_trip,
        "__slots__ attribute write": attribute_write,
        "live bitmap toggle (512-bit int)": bitmap_toggle,
        "dict probe after mask": dict_probe,
        "memoryview word read": word_read,
        "method call that returns at once": method_call,
        f"alloc+free pair ({size} B)": lambda: free(alloc(size)),
    }
    try:
        timings = compare([Contender(k, _loop(v)) for k, v in bodies.items()], settings)
    finally:
        free(block)
        allocator.close()
    empty = timings["empty loop"].median_ns
    return {k: t.median_ns - empty for k, t in timings.items() if k != "empty loop"}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the profile and the primitive costs."""
    command = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__)
    command.add_argument("--policy", default="dict-lookup", help="configuration to profile")
    command.add_argument("--size", type=int, default=64, help="request size in bytes")
    command.add_argument("--pairs", type=int, default=200_000, help="pairs under cProfile")
    command.add_argument("--resident", action="store_true",
                         help="keep one other block of the size live (the steady state that "
                         "measurement 1 times): no EMPTY/PARTIAL transition per pair")
    command.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                         help="time the primitives by wall or by the thread's CPU time")
    args = command.parse_args(argv)
    print(profile_pairs(args.policy, args.size, args.pairs, resident=args.resident))
    lines = line_counts(args.policy, args.size, 1000, resident=args.resident)
    print(f"{sum(n for _, n, _ in lines):.0f} lines of pyslab/plugin code per pair:")
    for where, per_pair, code in lines:
        print(f"{per_pair:5.2f}  {where:<32} {code}")
    settings = Settings(rounds=9, batch_ns=5_000_000, clock=args.clock)
    for name, ns in primitives(args.policy, args.size, settings).items():
        print(f"{ns:8.0f} ns  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

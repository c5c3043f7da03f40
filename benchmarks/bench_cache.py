"""An object cache of constructed objects against constructing each object anew.

Contenders, per operation (one object obtained, used once, given back):

- ``construct anew``: ``Conn()`` on the Python heap, then the constructor; dropped after use.
- ``construct in slab``: a block from the allocator, ``Conn.from_address``, the constructor,
  then ``free``: the same memory as the cache, constructed every time.
- ``object cache``: ``cache.alloc()`` then ``cache.free()``; the constructor ran once per object
  when its slab was built.

Two constructors: ``light`` sets three fields; ``table`` also fills a 32-entry lookup table, a
stand-in for the initialisation Bonwick's caches exist to save (locks, lists, headers).

Figures are medians of nanoseconds per operation over interleaved, rotated rounds
(:func:`benchmarks.timing.compare`), and ratios of medians against ``construct anew``. They
describe this machine and are never asserted by the tests.

Run: python -m benchmarks.bench_cache [--rounds 9] [--batch-ms 20]
"""

from __future__ import annotations

import argparse
import ctypes
from collections.abc import Callable
from itertools import repeat

import pyslab

from .timing import Contender, Settings, compare

__all__ = ["main", "measure"]

BASELINE = "construct anew"


class Conn(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("state", ctypes.c_int32),
        ("owner", ctypes.c_int64),
        ("table", ctypes.c_uint8 * 48),
    ]


def light(conn: Conn) -> None:
    conn.magic = 0xC0FFEE
    conn.state = 1
    conn.owner = 0


def table(conn: Conn) -> None:
    light(conn)
    entries = conn.table
    for i in range(32):
        entries[i] = (i * 167 + 13) & 0xFF


def use(conn: Conn) -> None:
    """What a caller does with the object: read one field, write another."""
    conn.owner = conn.state + 1
    conn.owner = 0  # back to the constructed state


def _contenders(
    allocator: pyslab.SlabAllocator, ctor: Callable[[Conn], None]
) -> tuple[list[Contender], pyslab.ObjectCache[Conn]]:
    cache = pyslab.ObjectCache(allocator, Conn, ctor=ctor, name=f"bench-{ctor.__name__}")
    size = ctypes.sizeof(Conn)
    alloc, free, at = allocator.alloc, allocator.free, Conn.from_address
    take, give = cache.alloc, cache.free

    def anew(n: int) -> None:
        for _ in repeat(None, n):
            conn = Conn()
            ctor(conn)
            use(conn)

    def in_slab(n: int) -> None:
        for _ in repeat(None, n):
            address = alloc(size)
            conn = at(address)
            ctor(conn)
            use(conn)
            free(address)

    def cached(n: int) -> None:
        for _ in repeat(None, n):
            conn = take()
            use(conn)
            give(conn)

    return [
        Contender(BASELINE, anew),
        Contender("construct in slab", in_slab),
        Contender("object cache", cached),
    ], cache


def measure(settings: Settings) -> dict[str, dict[str, float]]:
    """Median ns per operation of every contender, by constructor name then contender."""
    results: dict[str, dict[str, float]] = {}
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        for ctor in (light, table):
            contenders, cache = _contenders(allocator, ctor)
            timings = compare(contenders, settings)
            results[ctor.__name__] = {name: t.median_ns for name, t in timings.items()}
            cache.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--batch-ms", type=float, default=20.0, help="ms per timed batch")
    args = parser.parse_args(argv)
    settings = Settings(rounds=args.rounds, batch_ns=int(args.batch_ms * 1e6), min_rounds=1)
    results = measure(settings)
    print(f"median ns per object (get, use, give back); {args.rounds} interleaved rounds")
    print(f"{'constructor':<12} {'contender':<18} {'ns/op':>8} {'vs ' + BASELINE:>20}")
    for ctor_name, medians in results.items():
        base = medians[BASELINE]
        for name, median in medians.items():
            print(f"{ctor_name:<12} {name:<18} {median:>8.0f} {median / base:>19.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

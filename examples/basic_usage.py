"""Allocate real memory from pyslab, write to it through ctypes, swap policies, print stats.

Run: python examples/basic_usage.py
"""

from __future__ import annotations

import ctypes

import pyslab


def show(allocator: pyslab.SlabAllocator, title: str) -> None:
    stats = allocator.stats()
    print(f"\n{title}  (policy {stats.policy}, {stats.mapped_bytes} bytes mapped)")
    print(f"  {'class':>6} {'slabs':>6} {'empty':>6} {'used':>6} {'total':>6} {'peak':>6}")
    for c in stats.classes:
        if c.slabs:
            print(
                f"  {c.slot_size:>6} {c.slabs:>6} {c.empty_slabs:>6} {c.used_slots:>6} "
                f"{c.total_slots:>6} {c.peak_used:>6}"
            )
    print(f"  large blocks: {stats.large_blocks} ({stats.large_bytes} bytes)")


def main() -> None:
    with pyslab.SlabAllocator(policy="first-fit") as allocator:
        print("registered policies:")
        for name, description in pyslab.policies().items():
            print(f"  {name:<12} {description}")

        # Real addresses: C (here ctypes) reads and writes them.
        greeting = allocator.alloc(32)
        ctypes.memmove(greeting, b"Hello from pyslab!\0", 19)
        print(f"\n{greeting:#x} holds {ctypes.string_at(greeting).decode()!r}")
        point = ctypes.cast(allocator.calloc(2, 8), ctypes.POINTER(ctypes.c_double))
        point[0], point[1] = 1.5, -2.25
        print(f"a calloc'd pair of doubles: ({point[0]}, {point[1]})")

        blocks = [allocator.alloc(size) for size in range(1, 1025, 3) for _ in range(4)]
        big = allocator.alloc(100_000)  # larger than every class: libc serves it
        show(allocator, f"after {len(blocks) + 3} allocations")

        for address in blocks[::2]:
            allocator.free(address)
        show(allocator, "after freeing every other block")

        # Swap the policy of the live allocator: nothing moves, nothing is lost.
        allocator.set_policy("dict-lookup+reclaim")
        for address in blocks[1::2]:
            allocator.free(address)
        show(allocator, "after dict-lookup+reclaim freed the rest (empty slabs unmapped)")

        try:
            allocator.free(blocks[1])
        except pyslab.DoubleFreeError as error:
            print(f"\ncaught: {error}")
        for block in (greeting, ctypes.cast(point, ctypes.c_void_p).value, big):
            allocator.free(block)
        allocator.validate()
        print("validate(): every invariant holds")


if __name__ == "__main__":
    main()

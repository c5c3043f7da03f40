"""The timed loop bodies, one per access pattern, shared by every contender of a comparison.

Each factory binds the heap's two callables to locals first, so the loop pays one call per
operation and nothing else that differs between contenders.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import repeat

from .heaps import Heap
from .timing import Contender

__all__ = ["batch_contender", "churn_contender", "pair_contender", "resident_blocks"]


@contextmanager
def resident_blocks(heaps: Iterable[Heap], size: int) -> Iterator[None]:
    """Keep one ``size``-byte block live in each heap for the duration.

    A pair on an otherwise empty class would move its slab from EMPTY to PARTIAL and back on
    every pair (the policy's ``keep_empty`` runs each time); a program that uses the class
    has other blocks live. One resident block measures that steady state.
    """
    held = [(heap, heap.alloc(size)) for heap in heaps]
    try:
        yield
    finally:
        for heap, address in held:
            heap.free(address)


def pair_contender(heap: Heap, size: int, name: str | None = None) -> Contender:
    """``n`` times: allocate ``size`` bytes and free the block at once (one op = one pair)."""
    alloc, free = heap.alloc, heap.free

    def run(n: int) -> None:
        for _ in repeat(None, n):
            free(alloc(size))

    return Contender(name or heap.name, run)


def batch_contender(heap: Heap, size: int, order: list[int], name: str | None = None) -> Contender:
    """Allocate ``len(order)`` blocks, then free them in ``order`` (one op = one alloc + free).

    ``order`` is a permutation of ``range(len(order))``: the pattern that scatters a free list.
    """
    alloc, free = heap.alloc, heap.free

    def run(n: int) -> None:
        addresses = [alloc(size) for _ in repeat(None, n)]
        for index in order:
            free(addresses[index])

    return Contender(name or heap.name, run, ops=len(order))


def churn_contender(
    heap: Heap, size: int, blocks: list[int], rng: random.Random, name: str | None = None
) -> Contender:
    """Free a random live block and allocate a replacement, ``n`` times (one op = one of each).

    ``blocks`` holds every live block of ``heap`` and is updated in place; the random indices
    of a batch are drawn before it, untimed.
    """
    alloc, free = heap.alloc, heap.free
    indices: list[int] = []
    population = range(len(blocks))

    def prepare(n: int) -> None:
        indices[:] = rng.choices(population, k=n)

    def run(n: int) -> None:
        for index in indices:
            free(blocks[index])
            blocks[index] = alloc(size)

    return Contender(name or heap.name, run, prepare=prepare)


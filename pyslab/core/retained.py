"""The books of a closed allocator: the mappings it keeps for blocks live Python objects own.

``SlabAllocator.close()`` asks its clients which blocks live Python objects still use (their
``pinned_blocks``); the slabs and large blocks holding them stay mapped ("retained") and every
other one goes back at once. From then on :class:`RetainedMappings` keeps the books: which
pinned block lies in which mapping, and how many pinned blocks each mapping still holds. A
free of a pinned block takes it off the books; the last one of a mapping releases it.

Invariant: every pinned block lies in exactly one retained mapping, ``counts[start]`` is the
number of pinned blocks in the mapping at ``start`` and is never 0 (a mapping whose count
would reach 0 is released and forgotten). Checked by :meth:`RetainedMappings.check`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Final, final

from pyslab.errors import AllocatorClosedError, CorruptionError

__all__ = ["RetainedMappings"]


@final
class RetainedMappings:
    """Pinned blocks and the mappings that hold them (empty for an open allocator).

    Args:
        slab_size: bytes per slab; slabs are aligned to it (invariant 1).
    """

    __slots__ = ("_slab_size", "counts", "pins")

    def __init__(self, slab_size: int) -> None:
        self._slab_size: Final = slab_size
        self.pins: dict[int, int] = {}
        """Every pinned block not yet freed -> the start of the mapping holding it."""
        self.counts: dict[int, int] = {}
        """Every retained mapping's start -> the number of pinned blocks in it (never 0)."""

    def keep(
        self, addresses: Iterable[int], bases: set[int], large: Mapping[int, int]
    ) -> None:
        """Take ``addresses`` on the books: each one in a slab (its base among ``bases``) or
        a large block (``large``: start -> size, an address at or inside one) is pinned to
        its mapping; any other address is left out.

        Complexity: O(addresses), plus O(L log L) for L large blocks when an address lies
        inside a large block rather than at its start (a front end hands out such offsets).
        """
        mask = -self._slab_size
        starts: list[int] | None = None  # large block starts, sorted on first need
        pins: dict[int, int] = {}
        for address in addresses:
            if type(address) is not int or address <= 0:
                continue
            if address & mask in bases:
                pins[address] = address & mask
            elif address in large:
                pins[address] = address
            else:
                if starts is None:
                    starts = sorted(large)
                index = bisect.bisect_right(starts, address) - 1
                if index >= 0 and address < starts[index] + large[starts[index]]:
                    pins[address] = starts[index]
        counts: dict[int, int] = {}
        for start in pins.values():
            counts[start] = counts.get(start, 0) + 1
        self.pins, self.counts = pins, counts

    def holds(self, start: int) -> bool:
        """True when the mapping at ``start`` is retained."""
        return start in self.counts

    def pinned(self, address: int) -> bool:
        """True when ``address`` is a pinned block not yet freed."""
        return address in self.pins

    def unpin(self, address: int) -> int | None:
        """Take a pinned block off the books; return the start of its mapping when that was
        its last pinned block (the caller releases the mapping, then calls :meth:`forget`),
        else None.

        Raises:
            AllocatorClosedError: ``address`` is not a pinned block (nothing changes).
        """
        start = self.pins.get(address)
        if start is None:
            raise AllocatorClosedError(f"{address:#x} used after the allocator was closed")
        left = self.counts[start] - 1
        del self.pins[address]
        if left:
            self.counts[start] = left
            return None
        return start

    def forget(self, start: int) -> None:
        """The mapping at ``start`` was released: drop it from the books."""
        del self.counts[start]

    def slabs(self, large: Mapping[int, int]) -> int:
        """How many retained mappings are slabs (the others are large blocks)."""
        return sum(1 for start in self.counts if start not in large)

    def check(self, large: Mapping[int, int], slabs_listed: bool) -> None:
        """Check the books of a closed allocator (the module docstring's invariant), and that
        nothing but the retained mappings is listed (``slabs_listed``) or tracked (``large``).

        Raises:
            CorruptionError: naming what disagrees.
        """
        counts: dict[int, int] = {}
        for address, start in self.pins.items():
            counts[start] = counts.get(start, 0) + 1
            size = large.get(start)
            end = start + (self._slab_size if size is None else size)
            if not start <= address < end:
                raise CorruptionError(
                    f"pinned block {address:#x} lies outside its retained mapping at {start:#x}"
                )
        if counts != self.counts:
            raise CorruptionError(
                f"the retained mappings count {sum(self.counts.values())} pinned blocks "
                f"in {len(self.counts)} mappings, but {len(self.pins)} blocks are pinned "
                f"in {len(counts)}"
            )
        stray = [start for start in large if start not in self.counts]
        if stray or slabs_listed:
            raise CorruptionError(
                f"closed allocator still lists slabs, or tracks large blocks no Python object "
                f"owns ({len(stray)})"
            )
        for start in self.counts:
            if start not in large and start & (self._slab_size - 1):
                raise CorruptionError(f"retained slab {start:#x} is not aligned to a slab")

    def __len__(self) -> int:
        return len(self.counts)

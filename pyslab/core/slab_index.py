"""The ``{slab base: slab}`` index: which slab owns an address, in one dict probe.

Every slab's base is aligned to the slab size (invariant 1 of the package docstring, a page
source guarantee), so the base of the slab that holds any address is ``address & mask`` with
``mask = ~(slab_size - 1)``; one dict lookup then says whether that slab is indexed. Policies
that answer ``find_owner`` this way (``dict-lookup``), or that must tell a slab block from any
other address on their own hot path (``thread-cache``, ``debug``), keep one :class:`SlabIndex`
and update it from their ``slab_added`` and ``slab_removed`` hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, final

from pyslab.errors import CorruptionError

from .slab import MemorySlab, SizeClass

__all__ = ["SlabIndex"]


@final
class SlabIndex:
    """The slabs of one allocator by base address, and the mask that rounds an address down
    to its slab's base.

    Hot paths may read the two documented attributes directly, which costs one dict probe and
    no Python call beyond it, exactly what :meth:`owner` does::

        slab = index.by_base.get(address & index.mask)

    - ``by_base``: ``{slab.base: slab}`` for every indexed slab, in the order they were added.
      Read it, never write it: only :meth:`add`, :meth:`remove` and :meth:`clear` change it,
      and they change it in place, so a reference to it taken once (a front end caches it)
      always sees the current index.
    - ``mask``: ``~(slab_size - 1)``; ``address & mask`` is the base of the slab-sized,
      slab-aligned stretch holding ``address``.
    - ``slab_size``: bytes per slab, a power of two.

    Args:
        slab_size: bytes per slab (``Heap.slab_size``).

    Raises:
        TypeError: ``slab_size`` is not an int.
        ValueError: ``slab_size`` is not a positive power of two.

    Memory: one dict entry per slab.
    """

    __slots__ = ("by_base", "mask", "slab_size")

    def __init__(self, slab_size: int) -> None:
        if type(slab_size) is not int:
            raise TypeError(f"slab_size must be an int, not {slab_size!r}")
        if slab_size <= 0 or slab_size & (slab_size - 1):
            raise ValueError(f"slab_size must be a positive power of two, not {slab_size}")
        self.slab_size: Final = slab_size
        self.mask: Final = ~(slab_size - 1)
        self.by_base: Final[dict[int, MemorySlab]] = {}

    def add(self, slab: MemorySlab) -> None:
        """Index ``slab`` under its base (from ``slab_added``).

        Raises:
            ValueError: the base is not aligned to ``slab_size``, or a slab is already indexed
                under it; the index is unchanged.

        Complexity: O(1).
        """
        base = slab.base
        if base & ~self.mask:
            raise ValueError(f"{slab!r}: base is not aligned to the slab size {self.slab_size}")
        if base in self.by_base:
            raise ValueError(f"{slab!r}: {self.by_base[base]!r} is already indexed at {base:#x}")
        self.by_base[base] = slab

    def remove(self, slab: MemorySlab) -> None:
        """Forget ``slab`` (from ``slab_removed``: it goes back to the page source).

        Raises:
            KeyError: ``slab`` is not the slab indexed under its base; the index is unchanged.

        Complexity: O(1).
        """
        if self.by_base.get(slab.base) is not slab:
            raise KeyError(f"{slab!r} is not in the slab index")
        del self.by_base[slab.base]

    def clear(self) -> None:
        """Forget every slab (``unbind``), in place: a front end that holds ``by_base`` then
        finds no slab, rather than slabs whose memory has gone back. Complexity: O(slabs)."""
        self.by_base.clear()

    def owner(self, address: int) -> MemorySlab | None:
        """The indexed slab whose mapping holds ``address`` (any byte of it), or None.

        Any int is accepted: an address in no indexed slab, or no address at all, gives None.

        Complexity: O(1), one dict probe.
        """
        return self.by_base.get(address & self.mask)

    def __len__(self) -> int:
        """Indexed slabs. Complexity: O(1)."""
        return len(self.by_base)

    def __iter__(self) -> Iterator[MemorySlab]:
        """Every indexed slab, in the order they were added. Complexity: O(1) per slab."""
        return iter(self.by_base.values())

    def __contains__(self, slab: object) -> bool:
        """True when ``slab`` itself is indexed under its base. Complexity: O(1)."""
        return isinstance(slab, MemorySlab) and self.by_base.get(slab.base) is slab

    def check(self, size_classes: Iterable[SizeClass], holder: str = "the slab index") -> None:
        """Verify that the index holds exactly the slabs of ``size_classes``, each under its
        own base (a policy's ``check()``, which ``validate()`` calls, with the heap held still).

        ``holder`` names the index in the error (the policy that keeps it).

        Raises:
            CorruptionError: a slab of the heap is missing, or indexed under another slab's
                name, or the index holds a slab that no class holds (one released, say).

        Complexity: O(slabs).
        """
        by_base = self.by_base
        slabs = 0
        for size_class in size_classes:
            for slab in size_class.slabs:
                slabs += 1
                entry = by_base.get(slab.base)
                if entry is not slab:
                    raise CorruptionError(
                        f"{holder} has {entry!r} at {slab.base:#x}, where {slab!r} lies"
                    )
        if len(by_base) != slabs:
            # Every slab of the heap is indexed (above), so more entries are stale ones.
            raise CorruptionError(
                f"{holder} holds {len(by_base)} slabs where the heap's classes list {slabs}"
            )

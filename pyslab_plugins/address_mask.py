"""``address-mask``: find a block's slab from its address alone, by arithmetic, as obmalloc does.

Anchor: CPython obmalloc (``POOL_ADDR(p)`` rounds an address down to its pool, and
``address_in_range`` checks the arena without a lookup per block).
"""

from __future__ import annotations

from typing import TypeGuard

from pyslab import CorruptionError, Policy
from pyslab.core import ArenaPageSource, MemorySlab, PageSource, SizeClass, SlabIndex
from pyslab.policy import Heap


class AddressMask(Policy):
    """O(1) owner lookup without hashing: every slab lies in one region reserved up front.

    What it changes: the ``find_owner`` decision, and the page source when the allocator is
    built without one (:meth:`page_source`: an :class:`~pyslab.core.ArenaPageSource` of ``region``
    bytes that serves slabs only; large blocks stay with libc). Slabs are carved from the
    region aligned to ``slab_size``, so the slab holding an address is
    ``(address - origin) >> log2(slab_size)`` in a list of one entry per slab-sized stretch
    of the region (``origin`` is the region's start rounded down to ``slab_size``): a bounds
    check rejects a foreign address at once, and an index finds the slab, or None for a
    stretch that holds no slab. ``ptr & ~(slab_size - 1)`` is that slab's base.

    Cost: per free, a chained comparison, a subtraction, a shift and a list index. In CPython
    that is no faster than ``dict-lookup``'s mask and dict probe for an owned address (a small
    int dict probe is as cheap as the arithmetic); a foreign address is refused faster, and
    a lookup does no hashing (the README gives both timings). Memory: one pointer per
    ``slab_size`` of the region (2 MiB of list for the default 1 GiB region of 4 KiB slabs),
    the region's virtual reservation, which costs nothing resident until slabs are used, and
    one dict entry per slab giving its place in the table (read by ``slab_removed`` only, not
    by lookups). The heap cannot outgrow the region: a slab that does not fit raises
    MemoryError (the allocator stays consistent).

    Out of memory: ``slab_added`` computes the slab's place first, then makes the one write
    that may allocate (the slab joins the dict of places, or the outside index), then stores
    it in the table, which allocates nothing: when it raises, nothing has changed.
    ``slab_removed`` allocates nothing at all (a dict ``pop`` or deletion and a list store),
    so the core can undo a ``slab_added`` with it even with memory exhausted (see
    ``SlabAllocator._list_slab``).

    The page source should expose ``region -> (start, end)`` holding every slab (an
    ``ArenaPageSource`` does). Bound to another source (``set_policy`` on an allocator built on
    ``mmap``, or an explicit ``page_source=``), it still works: slabs outside the region are
    kept in a :class:`~pyslab.core.SlabIndex` (a dict keyed by base), consulted only for
    addresses outside the region, so it then costs what ``dict-lookup`` costs.
    ``slabs_outside`` says how many there are.

    Args:
        region: bytes of address space to reserve for slabs (default 1 GiB).

    Raises:
        TypeError, ValueError: ``region`` is not a positive int.
    """

    name = "address-mask"
    description = "O(1) owner lookup by address arithmetic over one region reserved up front"

    def __init__(self, region: int = 1 << 30) -> None:
        if type(region) is not int:
            raise TypeError(f"region must be an int, not {region!r}")
        if region <= 0:
            raise ValueError(f"region must be a positive number of bytes, not {region}")
        self.region = region

    def page_source(self) -> PageSource:
        """A fresh arena of ``region`` bytes for slabs only (large blocks stay with libc)."""
        return ArenaPageSource(self.region, large_objects=False)

    def bind(self, heap: Heap) -> None:
        """Build the table over the page source's region (an empty one if it has none)."""
        super().bind(heap)
        region = getattr(heap.page_source, "region", None)
        slab_size = heap.slab_size
        start, end = region if _is_region(region) else (0, 0)
        # Slabs outside the region, by base: empty while the source is the region's arena.
        # find_owner probes its dict itself (no call layer); it is updated in place.
        self._outside = SlabIndex(slab_size)
        self._outside_by_base = self._outside.by_base
        self._mask = self._outside.mask
        self._shift = slab_size.bit_length() - 1
        self._origin = start & ~(slab_size - 1)
        self._start = start
        self._end = end
        self._table: list[MemorySlab | None] = [None] * (
            (end - self._origin + slab_size - 1) >> self._shift
        )
        # The table index of every slab in the table, so that slab_removed needs no
        # arithmetic (a new int may fail to allocate); its length counts them, for check().
        self._places: dict[MemorySlab, int] = {}

    def _in_region(self, slab: MemorySlab) -> bool:
        return self._start <= slab.base and slab.base + slab.size_class.slab_size <= self._end

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Enter the slab in the table (or the outside dict). All or nothing. O(1)."""
        if self._in_region(slab):
            place = (slab.base - self._origin) >> self._shift
            self._places[slab] = place  # the one write that may allocate: first
            self._table[place] = slab
        else:
            self._outside.add(slab)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Clear the slab's entry. Allocates nothing. O(1).

        Raises:
            KeyError: the slab is in neither the table nor the outside dict (nothing changes).
        """
        place = self._places.pop(slab, None)
        if place is None:
            self._outside.remove(slab)
        else:
            self._table[place] = None

    def find_owner(self, address: int) -> MemorySlab | None:
        """The slab holding ``address``, or None (outside the region, or no slab there).

        Complexity: O(1), no hashing while every slab is in the region.
        """
        # Bounds first: a foreign address is refused by two comparisons. Inside the region
        # [_start, _end), the index is within the table, which covers [_origin, _end).
        if self._start <= address < self._end:
            return self._table[(address - self._origin) >> self._shift]
        outside = self._outside_by_base
        return outside.get(address & self._mask) if outside else None

    def check(self) -> None:
        """Verify the table against every slab (``validate()`` calls it).

        Raises:
            CorruptionError: a slab is not where the table or the outside dict says, or an
                entry is left for a slab that is gone.

        Complexity: O(slabs).
        """
        slabs = [s for c in self.heap.size_classes for s in c.slabs]
        for slab in slabs:
            if self._in_region(slab):
                place = (slab.base - self._origin) >> self._shift
                entry = self._table[place]
                if self._places.get(slab) != place:
                    raise CorruptionError(
                        f"address-mask places {slab!r} at {self._places.get(slab)!r}, "
                        f"not {place}"
                    )
            else:
                entry = self._outside.owner(slab.base)
            if entry is not slab:
                raise CorruptionError(f"address-mask has {entry!r} where {slab!r} lies")
        if len(self._places) + len(self._outside) != len(slabs):
            raise CorruptionError(
                f"address-mask holds {len(self._places)} table entries and "
                f"{len(self._outside)} outside for {len(slabs)} slabs"
            )

    @property
    def slabs_outside(self) -> int:
        """Slabs not in the region, found through the fallback dict. Complexity: O(1)."""
        return len(self._outside)

    def unbind(self) -> None:
        """Drop the table."""
        self._table = []
        self._places = {}
        self._start = self._end = 0
        self._outside.clear()


def _is_region(value: object) -> TypeGuard[tuple[int, int]]:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(type(v) is int for v in value)
        and 0 <= value[0] <= value[1]
    )

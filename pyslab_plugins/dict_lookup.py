"""``dict-lookup``: O(1) owner lookup through a dict keyed by slab base address."""

from __future__ import annotations

from pyslab import Policy
from pyslab.core import MemorySlab, SizeClass
from pyslab.policy import Heap


class DictLookup(Policy):
    """Find the owner of a freed address in O(1): ``{slab base: slab}``.

    Slabs are aligned to their size (a page-source guarantee), so the base of the slab holding
    any address is ``address & ~(slab_size - 1)``; one dict probe then says whether that slab
    is ours. This is the seed roadmap's "HashMap-based dealloc".
    Memory: one dict entry per slab.
    """

    name = "dict-lookup"
    description = "O(1) owner lookup on free: a dict from slab base address to slab"

    def bind(self, heap: Heap) -> None:
        """Start with an empty table; existing slabs are announced through slab_added."""
        super().bind(heap)
        self._by_base: dict[int, MemorySlab] = {}
        self._mask = ~(heap.slab_size - 1)

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Index the new slab by its base."""
        self._by_base[slab.base] = slab

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Forget a slab going back to the page source."""
        del self._by_base[slab.base]

    def find_owner(self, address: int) -> MemorySlab | None:
        """The slab whose mapping contains ``address``. Complexity: O(1)."""
        return self._by_base.get(address & self._mask)

    def unbind(self) -> None:
        """Drop the table."""
        self._by_base = {}

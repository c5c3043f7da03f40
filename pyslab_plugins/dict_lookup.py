"""``dict-lookup``: O(1) owner lookup through a dict keyed by slab base address."""

from __future__ import annotations

from pyslab import Policy
from pyslab.core import MemorySlab, SizeClass, SlabIndex
from pyslab.policy import Heap


class DictLookup(Policy):
    """Find the owner of a freed address in O(1): ``{slab base: slab}``.

    Slabs are aligned to their size (a page-source guarantee), so the base of the slab holding
    any address is ``address & ~(slab_size - 1)``; one dict probe then says whether that slab
    is ours: a :class:`~pyslab.core.SlabIndex`, kept up to date by ``slab_added`` and
    ``slab_removed`` and checked against the heap by ``validate()``.
    Memory: one dict entry per slab.
    """

    name = "dict-lookup"
    description = "O(1) owner lookup on free: a dict from slab base address to slab"

    def bind(self, heap: Heap) -> None:
        """Start with an empty index; existing slabs are announced through slab_added."""
        super().bind(heap)
        self._index = SlabIndex(heap.slab_size)
        # find_owner runs on every free: it probes the index's dict itself, sparing the call
        # of SlabIndex.owner (the dict is updated in place, so this reference stays current).
        self._by_base = self._index.by_base
        self._mask = self._index.mask

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Index the new slab by its base. Complexity: O(1)."""
        self._index.add(slab)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Forget a slab going back to the page source. Complexity: O(1)."""
        self._index.remove(slab)

    def find_owner(self, address: int) -> MemorySlab | None:
        """The slab whose mapping contains ``address`` (``SlabIndex.owner``). Complexity: O(1)."""
        return self._by_base.get(address & self._mask)

    def check(self) -> None:
        """Verify the index against the heap's slabs (``validate()`` calls it).

        Raises:
            CorruptionError: a slab is missing from the index, or the index holds one that is
                gone.

        Complexity: O(slabs).
        """
        self._index.check(self.heap.size_classes, "the dict-lookup index")

    def unbind(self) -> None:
        """Drop the index's slabs."""
        self._index.clear()

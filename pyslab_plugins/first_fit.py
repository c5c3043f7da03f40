"""``first-fit``: the design of the Rust ``slab-alloc`` allocator, and the base of every
composition."""

from __future__ import annotations

from pyslab import Policy
from pyslab.core import MemorySlab, SizeClass


class FirstFit(Policy):
    """Allocate from the newest slab of the class that has a free slot; find owners by a walk.

    The Rust allocator keeps each class's slabs in a list, prepends a new slab, and walks the
    list from its head for the first slab with a free slot. ``SizeClass.current`` caches the
    answer: it is always the newest slab with a free slot, because a new slab is the newest of
    all, and a full slab newer than ``current`` that gets a free slot takes its place
    (:meth:`slab_refilled`).
    So each allocation gets the slab that walk would find, and the walk itself runs only
    when ``current`` fills.

    ``find_owner`` walks every slab of every class: O(slabs), the cost its design documents for
    deallocation. Empty slabs are kept, as that design never gives memory back.
    """

    name = "first-fit"
    description = (
        "Rust slab-alloc's design, for study: newest slab with a free slot; every free walks "
        "all slabs, O(slabs)"
    )

    def select_slab(self, size_class: SizeClass) -> MemorySlab | None:
        """The newest slab with a free slot, or None.

        Complexity: O(slabs of the class), O(1) when every slab is full (then none has room,
        and a new slab is mapped without walking the full ones).
        """
        if size_class.full == len(size_class.slabs):
            return None
        for slab in reversed(size_class.slabs):
            if slab.used < slab.capacity:
                return slab
        return None

    def find_owner(self, address: int) -> MemorySlab | None:
        """The slab containing ``address``, by walking them all. Complexity: O(slabs)."""
        for size_class in self.heap.size_classes:
            for slab in size_class.slabs:
                if slab.base <= address < slab.base + size_class.slab_size:
                    return slab
        return None

    def keep_empty(self, size_class: SizeClass, slab: MemorySlab) -> bool:
        """Always keep: the design never returns a slab."""
        return True

    def slab_color(self, size_class: SizeClass, serial: int) -> int:
        """No coloring: slot 0 at the start of the slab."""
        return 0

    def slab_refilled(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Keep ``current`` the newest slab with a free slot. Complexity: O(1)."""
        current = size_class.current
        if current is None or slab.serial > current.serial:
            size_class.current = slab

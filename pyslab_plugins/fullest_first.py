"""``fullest-first``: allocate from the fullest partial slab, so that nearly empty slabs drain.

Anchor: CPython obmalloc (arenas kept sorted by free pools, most used first, with
``nfp2lasta`` search fingers; a pool that gets a free block goes to the front of its list) and
Linux SLUB (``kmem_cache_shrink`` sorts partial slabs fullest first).
"""

from __future__ import annotations

from pyslab import CorruptionError, Policy
from pyslab.core import MemorySlab, SizeClass
from pyslab.policy import Heap


class FullestFirst(Policy):
    """Allocate from the partial slab that has the fewest free slots, so that the others drain.

    What it changes: the ``select_slab`` decision, and ``current``, which it keeps a fullest
    partial slab at all times: when a full slab gets a free slot it becomes ``current`` (one
    free slot: the fullest of all, as obmalloc puts such a pool first), and when a free drains
    ``current`` below another partial slab, that one takes over. Only the current slab ever
    gets fuller, so no other change is needed. Allocations concentrate on few slabs and the
    others drain; with ``reclaim`` (or ``shrink()``) the drained slabs go back to the page
    source. Only when no slab is partial does it pick a cached empty slab (the most recently
    emptied), and only then a new one.

    How the choice is O(1): per class, the partial slabs are kept in buckets by free count
    (``buckets[f]`` holds the slabs with ``f`` free slots, an insertion-ordered dict used as a
    set), and an int bitmap has bit ``f`` set when ``buckets[f]`` is not empty. The fullest
    partial slab is in the bucket of the lowest set bit: ``(mask & -mask).bit_length() - 1``,
    one arithmetic step on a bitmap of at most ``slots_per_slab + 1`` bits, where obmalloc
    keeps one finger per free count into its sorted list.

    Cost: the buckets are maintained through ``block_allocated`` and ``block_freed``: each
    alloc and free pays one hook call that moves its slab to the next bucket (two dict
    operations and a bitmap update; the observed hot path). A slab's bucket is its free count,
    so no table from slab to bucket is kept; nor is anything kept for empty or full slabs, so
    a slab going back to the page source (always empty) needs no ``slab_removed``. Memory: one
    dict entry per partial slab and ``slots_per_slab + 1`` small dicts per class.

    Out of memory: every hook is all or nothing, as the core's own updates are (see "Out of
    memory" in :mod:`pyslab.core.guard`). ``block_allocated``, ``block_freed`` and
    ``slab_added`` compute the new bitmap and the new ``current`` before their first write,
    then file the slab in its new bucket (the one write that may allocate: the dict may
    grow), then take it out of the old one and store the bitmap and ``current``, which
    allocates nothing; a hook that raises has changed nothing, and the core then undoes its
    own writes. ``slab_refilled`` is one attribute store; ``select_slab`` writes nothing.
    """

    name = "fullest-first"
    description = "allocate from the fullest partial slab (O(1) by free-count buckets)"

    def bind(self, heap: Heap) -> None:
        """Create empty buckets; existing slabs are filed as slab_added announces them."""
        super().bind(heap)
        # Invariant (between hooks): a slab with 0 < used < capacity is in
        # _buckets[class][capacity - used] and in no other bucket; empty and full slabs are in
        # none; bit f of _masks[class] is set exactly when _buckets[class][f] is not empty.
        # A slab's bucket is thus known from its fields: no slab -> bucket table is needed.
        self._buckets: list[list[dict[MemorySlab, None]]] = [
            [{} for _ in range(c.slots_per_slab + 1)] for c in heap.size_classes
        ]
        self._masks = [0] * len(self._buckets)

    def _enter(self, index: int, slab: MemorySlab, free: int) -> None:
        bucket = self._buckets[index][free]
        mask = self._masks[index] | 1 << free
        bucket[slab] = None  # the one write that may allocate (the dict may grow): first
        self._masks[index] = mask

    # The two per-block hooks inline _enter and its converse: they run on every alloc and free.
    # Each computes the new bitmap (a new int, which may fail to allocate) before its first
    # write; then the slab enters its new bucket, the one write that may allocate; then it
    # leaves the old one and the bitmap is stored, which allocates nothing.

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Move the slab one bucket fuller (out of the buckets once full).

        All or nothing (see "Out of memory" above). Complexity: O(1).
        """
        free = slab.capacity - slab.used
        index = slab.size_class.index
        buckets = self._buckets[index]
        mask = self._masks[index]
        before = free + 1
        left = None
        if before < slab.capacity:  # it was partial: it leaves the bucket of free + 1
            left = buckets[before]
            if len(left) == 1:
                mask &= ~(1 << before)
        if free:  # still partial: it enters the bucket of free
            entered = buckets[free]
            if not entered:
                mask |= 1 << free
            entered[slab] = None
        if left is not None:
            del left[slab]
        self._masks[index] = mask

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        """Move the slab one bucket emptier (out of the buckets once empty); if it is
        ``current`` and another partial slab is now fuller, make that one ``current``.

        The core tells this hook before it offers a slab that just became empty to
        ``keep_empty``, so a slab is in its bucket until this hook moves it, and an empty slab
        going back to the page source is in none. All or nothing (see "Out of memory" above).

        Complexity: O(1).
        """
        free = slab.capacity - slab.used
        index = slab.size_class.index
        buckets = self._buckets[index]
        mask = self._masks[index]
        left = None
        if free > 1:  # it was partial: it leaves the bucket of free - 1
            before = free - 1
            left = buckets[before]
            if len(left) == 1:
                mask &= ~(1 << before)
        entered = None
        if free < slab.capacity:  # still partial: it enters the bucket of free
            entered = buckets[free]
            if not entered:
                mask |= 1 << free
        size_class = slab.size_class
        successor = None
        if size_class.current is slab:
            fullest = (mask & -mask).bit_length() - 1
            if 0 < fullest < free:
                # The first slab of that bucket but this one (which may still be in it).
                for other in buckets[fullest]:
                    if other is not slab:
                        successor = other
                        break
        if entered is not None:
            entered[slab] = None
        if left is not None:
            del left[slab]
        self._masks[index] = mask
        if successor is not None:
            size_class.current = successor

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """File a slab (new ones are empty, and filed nowhere; a live allocator's may be
        partial). All or nothing. O(1)."""
        used = slab.used
        if used and used < slab.capacity:
            self._enter(size_class.index, slab, slab.capacity - used)

    def slab_refilled(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """A full slab got a free slot: with one free slot it is the fullest; use it next.

        Complexity: O(1).
        """
        size_class.current = slab

    def select_slab(self, size_class: SizeClass) -> MemorySlab | None:
        """The fullest partial slab, else the last slab to become empty, else None (map one).

        Complexity: O(1).
        """
        mask = self._masks[size_class.index]
        if mask:
            bucket = self._buckets[size_class.index][(mask & -mask).bit_length() - 1]
            return next(iter(bucket))
        if size_class.empty:
            return next(reversed(size_class.empty))
        return None

    def check(self) -> None:
        """Verify the buckets against every slab (``validate()`` calls it).

        Raises:
            CorruptionError: a partial slab is missing from its bucket, a bucket holds a slab
                that does not belong there, or the bitmap disagrees with the buckets.

        Complexity: O(slabs + buckets).
        """
        for size_class, buckets, mask in zip(
            self.heap.size_classes, self._buckets, self._masks, strict=True
        ):
            expected = {
                s: s.capacity - s.used for s in size_class.slabs if 0 < s.used < s.capacity
            }
            filed = {s: free for free, bucket in enumerate(buckets) for s in bucket}
            if filed != expected:
                raise CorruptionError(
                    f"fullest-first buckets of {size_class!r} disagree with its slabs: "
                    f"{len(filed)} filed, {len(expected)} partial"
                )
            bits = sum(1 << free for free, bucket in enumerate(buckets) if bucket)
            if bits != mask:
                raise CorruptionError(
                    f"fullest-first bitmap of {size_class!r} is {mask:#x}, buckets say {bits:#x}"
                )

    def unbind(self) -> None:
        """Drop the buckets."""
        self._buckets = []
        self._masks = []

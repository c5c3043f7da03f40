"""``fullest-first``: allocate from the fullest partial slab, so that nearly empty slabs drain.

Anchor: CPython obmalloc (arenas kept sorted by free pools, most used first, with
``nfp2lasta`` search fingers; a pool that gets a free block goes to the front of its list) and
Linux SLUB (``kmem_cache_shrink`` sorts partial slabs fullest first).
"""

from __future__ import annotations

from pyslab import CorruptionError, Policy
from pyslab.core import MemorySlab, SizeClass
from pyslab.policy import Heap


class _Stale:
    """One class's stale entry, and what its latest per-block hook replaced (for its revert).

    A plain ``__slots__`` object: the hooks store into it, which allocates nothing.
    """

    __slots__ = ("adopted", "current", "filed", "free", "mask", "slab")

    def __init__(self) -> None:
        self.slab: MemorySlab | None = None
        """The slab that is also in the bucket of ``free``, where it no longer belongs."""
        self.free = 0  # 0 when there is none: bucket 0 is never a partial slab's
        self.mask = 0  # the bitmap before the latest hook
        self.filed = 0  # the bucket the latest hook filed its slab in (0: none)
        self.adopted = False  # that bucket held the slab as the stale entry, now valid
        self.current: MemorySlab | None = None  # ``current`` before the latest block_freed


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
    set), and an int bitmap has bit ``f`` set when ``buckets[f]`` holds a slab (but for the
    stale entry, below). The fullest partial slab is in the bucket of the lowest set bit:
    ``(mask & -mask).bit_length() - 1``, one arithmetic step on a bitmap of at most
    ``slots_per_slab + 1`` bits, where obmalloc keeps one finger per free count into its
    sorted list.

    Cost: the buckets are maintained through ``block_allocated`` and ``block_freed``: each
    alloc and free pays one hook call that moves its slab to the next bucket (two dict
    operations and a bitmap update; the observed hot path). A slab's bucket is its free count,
    so no table from slab to bucket is kept; nor is anything kept for empty or full slabs, so
    a slab going back to the page source (always empty) needs no ``slab_removed`` (it may stay
    as the stale entry, below, until the next hook of its class). Memory: one dict entry per
    partial slab, one stale entry per class, and ``slots_per_slab + 1`` small dicts per class.

    Out of memory: every hook is all or nothing, as the core's own updates are (see "Out of
    memory" in :mod:`pyslab.core.guard`). ``block_allocated``, ``block_freed`` and
    ``slab_added`` compute the new bitmap and the new ``current`` before their first write,
    then file the slab in its new bucket (the one write that may allocate: the dict may
    grow), then store, which allocates nothing; a hook that raises has changed nothing, and
    the core then undoes its own writes. ``slab_refilled`` is one attribute store;
    ``select_slab`` writes nothing.

    Both per-block hooks can be undone without memory (:meth:`revert_block_allocated`,
    :meth:`revert_block_freed`), so that a policy told after this one may fail, and so may
    the second step of a ``calloc`` or a moving ``realloc``. Undoing a move between buckets
    would put the slab back into the bucket it left, and a dict that lost a key may have to
    grow to take it back; so the slab is not taken out of its old bucket at once. Per class,
    one *stale* entry may remain: the slab that the latest per-block hook of the class moved
    stays in the bucket it left (``_stale``) until the next per-block
    hook of the class deletes it (a deletion, which allocates nothing). Every reader skips
    the stale entry and the bitmap ignores it. A revert then only deletes the entry its
    call inserted, makes the entry the call left stale valid again (the slab has its old free
    count back), and stores back the saved bitmap, ``current`` and stale marker.
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
        # Besides, per class, the stale entry: _stale[class].slab, when not None, is also in
        # _buckets[class][_stale[class].free], where it no longer belongs (its free count
        # differs, or it is empty or full); the bitmap and every reader ignore that entry.
        self._buckets: list[list[dict[MemorySlab, None]]] = [
            [{} for _ in range(c.slots_per_slab + 1)] for c in heap.size_classes
        ]
        self._masks = [0] * len(self._buckets)
        self._stale = [_Stale() for _ in self._buckets]

    def _enter(self, index: int, slab: MemorySlab, free: int) -> None:
        bucket = self._buckets[index][free]
        mask = self._masks[index] | 1 << free
        bucket[slab] = None  # the one write that may allocate (the dict may grow): first
        self._masks[index] = mask

    # The two per-block hooks inline _enter: they run on every alloc and free. Each computes
    # the new bitmap (a new int, which may fail to allocate) before its first write; then the
    # slab enters its new bucket, the one write that may allocate (unless the slab is the
    # stale entry there, which becomes valid: a store); then the previous stale entry is
    # deleted, the slab becomes the stale entry of the bucket it left, and the saved values
    # and the bitmap are stored, which allocates nothing.

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Move the slab one bucket fuller (out of the buckets once full).

        All or nothing (see "Out of memory" above). Complexity: O(1).
        """
        free = slab.capacity - slab.used
        index = slab.size_class.index
        buckets = self._buckets[index]
        old = mask = self._masks[index]
        stale = self._stale[index]
        pending, pending_free = stale.slab, stale.free
        before = free + 1
        left = before < slab.capacity  # it was partial: it leaves the bucket of free + 1
        # Clear its bit unless a valid slab stays: the stale entry does not count.
        if left and len(buckets[before]) - (pending_free == before) == 1:
            mask &= ~(1 << before)
        adopted = pending is slab and pending_free == free
        if free:  # still partial: it enters the bucket of free
            mask |= 1 << free
            buckets[free][slab] = None  # the one write that may allocate: first
        # --- commit ---
        if pending is not None and not adopted:
            del buckets[pending_free][pending]
        stale.mask = old
        stale.filed = free
        stale.adopted = adopted
        if left:
            stale.slab = slab
            stale.free = before
        else:
            stale.slab = None
            stale.free = 0
        self._masks[index] = mask

    def revert_block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Undo the latest ``block_allocated`` of the slab's class: deletions and stores of
        saved objects, which allocate nothing (see "Out of memory" above). Complexity: O(1).
        """
        index = slab.size_class.index
        stale = self._stale[index]
        filed = stale.filed
        if stale.adopted:  # the slab was the stale entry there: it is again
            stale.slab = slab
            stale.free = filed
        else:
            if filed:
                del self._buckets[index][filed][slab]
            stale.slab = None  # the entry the call left stale is valid again
            stale.free = 0
        self._masks[index] = stale.mask

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        """Move the slab one bucket emptier (out of the buckets once empty); if it is
        ``current`` and another partial slab is now fuller, make that one ``current``.

        The core tells this hook before it offers a slab that just became empty to
        ``keep_empty``, so a slab is in its bucket until this hook moves it, and an empty slab
        going back to the page source is in none (but may be the stale entry of its class, a
        reference no reader follows, deleted by the class's next hook). All or nothing (see
        "Out of memory" above).

        Complexity: O(1).
        """
        free = slab.capacity - slab.used
        index = slab.size_class.index
        buckets = self._buckets[index]
        old = mask = self._masks[index]
        stale = self._stale[index]
        pending, pending_free = stale.slab, stale.free
        before = free - 1
        left = free > 1  # it was partial: it leaves the bucket of free - 1
        if left and len(buckets[before]) - (pending_free == before) == 1:
            mask &= ~(1 << before)
        entering = free < slab.capacity  # still partial: it enters the bucket of free
        if entering:
            mask |= 1 << free
        adopted = entering and pending is slab and pending_free == free
        size_class = slab.size_class
        current = size_class.current
        successor = None
        if current is slab:
            fullest = (mask & -mask).bit_length() - 1
            if 0 < fullest < free:
                # The first valid slab of that bucket but this one (which may still be in it).
                for other in buckets[fullest]:
                    if other is not slab and not (other is pending and fullest == pending_free):
                        successor = other
                        break
        if entering:
            buckets[free][slab] = None  # the one write that may allocate: first
        # --- commit ---
        if pending is not None and not adopted:
            del buckets[pending_free][pending]
        stale.mask = old
        stale.filed = free if entering else 0
        stale.adopted = adopted
        stale.current = current
        if left:
            stale.slab = slab
            stale.free = before
        else:
            stale.slab = None
            stale.free = 0
        self._masks[index] = mask
        if successor is not None:
            size_class.current = successor

    def revert_block_freed(self, slab: MemorySlab, address: int) -> None:
        """Undo the latest ``block_freed`` of the slab's class, as
        :meth:`revert_block_allocated` does, and store ``current`` back. Complexity: O(1).
        """
        index = slab.size_class.index
        stale = self._stale[index]
        filed = stale.filed
        if stale.adopted:
            stale.slab = slab
            stale.free = filed
        else:
            if filed:
                del self._buckets[index][filed][slab]
            stale.slab = None
            stale.free = 0
        slab.size_class.current = stale.current
        self._masks[index] = stale.mask

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
        index = size_class.index
        mask = self._masks[index]
        if mask:
            free = (mask & -mask).bit_length() - 1
            entry = self._stale[index]
            stale = entry.slab if entry.free == free else None
            for slab in self._buckets[index][free]:  # a valid slab is there: the bit is set
                if slab is not stale:
                    return slab
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
        for size_class, buckets, mask, stale in zip(
            self.heap.size_classes, self._buckets, self._masks, self._stale, strict=True
        ):
            pending, pending_free = stale.slab, stale.free
            if pending is None and pending_free:
                raise CorruptionError(f"fullest-first's stale marker of {size_class!r} is bad")
            if pending is not None and (
                pending not in buckets[pending_free]
                or pending.capacity - pending.used == pending_free  # it belongs there
            ):
                raise CorruptionError(
                    f"fullest-first's stale entry {pending!r} of {size_class!r} is not one"
                )
            expected = {
                s: s.capacity - s.used for s in size_class.slabs if 0 < s.used < s.capacity
            }
            filed = {
                s: free for free, bucket in enumerate(buckets) for s in bucket
                if s is not pending or free != pending_free
            }
            if filed != expected:
                raise CorruptionError(
                    f"fullest-first buckets of {size_class!r} disagree with its slabs: "
                    f"{len(filed)} filed, {len(expected)} partial"
                )
            bits = sum(
                1 << free for free, bucket in enumerate(buckets)
                if len(bucket) > (pending is not None and free == pending_free)
            )
            if bits != mask:
                raise CorruptionError(
                    f"fullest-first bitmap of {size_class!r} is {mask:#x}, buckets say {bits:#x}"
                )

    def unbind(self) -> None:
        """Drop the buckets."""
        self._buckets = []
        self._masks = []
        self._stale = []

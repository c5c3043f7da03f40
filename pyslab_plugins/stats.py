"""``stats``: count every allocation, free and slab, for ``pyslab.observe.report(alloc)``.

Anchor: Linux's ``/proc/slabinfo`` and SLUB statistics (``CONFIG_SLUB_STATS``), CPython's
``sys._debugmallocstats()``; the "allocation statistics" of the Rust allocator's roadmap.
"""

from __future__ import annotations

from pyslab import CorruptionError, Policy
from pyslab.core import MemorySlab, SizeClass
from pyslab.observe import ClassCounters, PolicyCounters
from pyslab.policy import Heap


class _Counters:
    """Mutable counters of one size class (a plain object: the hooks update it in place)."""

    __slots__ = (
        "allocations", "frees", "requested", "saved_allocations", "saved_frees",
        "saved_requested", "slabs_at_bind", "slabs_created", "slabs_peak",
    )

    def __init__(self) -> None:
        self.allocations = 0
        self.frees = 0
        self.requested = 0
        self.slabs_at_bind = 0  # slabs the class held when the policy was bound
        self.slabs_created = 0
        self.slabs_peak = 0
        # The counts before the latest per-block hook of the class, for its revert (the old
        # int objects: storing them back allocates nothing, recomputing them could).
        self.saved_allocations = 0
        self.saved_frees = 0
        self.saved_requested = 0


class Stats(Policy):
    """Count allocations, frees, requested bytes and slabs per class; track the mapped peak.

    What it changes: nothing in placement or lookup. It observes ``block_allocated``,
    ``block_freed`` and ``slab_added``, and follows the report's
    :class:`pyslab.observe.CountsAllocations` protocol, so ``pyslab.observe.report(alloc)`` and
    ``pyslab.observe.report_dict(alloc)`` show its counters and the internal fragmentation and
    utilisation ratios (definitions in :mod:`pyslab.observe.heap_report`). Live blocks now and at
    peak, slabs now and large blocks come from the core (``alloc.stats()``): they are not
    counted twice. Nor are the slabs given back: a slab leaves its class only to go back to the
    page source, so ``slabs_reclaimed`` is the slabs the class had when the policy was bound,
    plus those created since, minus those it holds now.

    Cost: watching every block switches the allocator to its observed hot path; each alloc
    and each free pays one hook call (a few hundred nanoseconds, see the README's table).
    ``block_freed`` gets no size, so the requested size of each live block whose request was
    smaller than its slot is kept in a dict ``{address: size}``: about 30 bytes per such block
    for the dict entry (measured with ``tracemalloc``, 20,000 blocks of 5 bytes; checked in
    tests/test_plugin_stats.py), plus up to 64 bytes for the two int objects when the caller
    does not keep the address and the size exceeds 256; nothing for a request that fills its
    slot exactly.

    Blocks already live when the policy is attached by ``set_policy`` are counted as filling
    their slot (their requested size is unknown), so internal fragmentation is then a lower
    bound until they are freed. Slabs that existed then count toward the peaks and
    ``slabs_reclaimed`` but not ``slabs_created``.

    Out of memory: every hook is all or nothing. It computes every new value first (a new int
    may fail to allocate), then makes the one write that may allocate, a size joining the
    dict (``block_allocated``), and then only attribute stores and a dict ``pop``, which
    allocate nothing; a hook that raises has changed nothing, and the core undoes its own
    writes (see "Out of memory" in :mod:`pyslab.core.guard`). Both per-block hooks can be
    undone without memory (:meth:`revert_block_allocated`, :meth:`revert_block_freed`), so a
    policy told after this one may fail, and so may the second step of a ``calloc`` or a
    moving ``realloc``. Undoing a free would put the size it forgot back into the dict, which
    may have to grow; so ``block_freed`` leaves the freed block's entry in the dict as the
    *stale* entry (``_forgotten``), deleted by the next per-block hook (a deletion, which
    allocates nothing), or taken over by the allocation that reuses the address; nothing
    reads it. A revert deletes what its call inserted and stores back the saved counts and
    stale marker. ``slab_added`` needs no undo:
    when the core cannot list the slab after all, it goes back to the page source at once, and
    the counters then say exactly that (created, and reclaimed, the peaks counting it).
    """

    name = "stats"
    description = "count allocations, frees, requested bytes and slabs per class, for report()"

    def bind(self, heap: Heap) -> None:
        """Start the counters; blocks already live are counted as filling their slots."""
        super().bind(heap)
        self._slab_size = heap.slab_size
        self._classes = [_Counters() for _ in heap.size_classes]
        self._requested: dict[int, int] = {}
        # The address of a freed block whose entry is still in _requested (or None): see
        # "Out of memory" above. Only live blocks' entries are ever read.
        self._forgotten: int | None = None
        # What the latest block_allocated did with the stale entry, for its revert: True
        # when it took the entry over (the same address, a size kept), which is stale again.
        self._adopted = False
        self._mapped_peak = 0
        # Slabs with a serial below this existed before bind: announced, not created.
        self._first_serial = 1 + max(
            (s.serial for c in heap.size_classes for s in c.slabs), default=-1
        )
        for size_class, counters in zip(heap.size_classes, self._classes, strict=True):
            counters.requested = size_class.live * size_class.slot_size
            counters.slabs_at_bind = len(size_class.slabs)

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Count the block and its requested size.

        All or nothing: the new counts are computed, then the size joins the dict (the one
        write that may allocate; a store when the address is the stale entry's, which it
        takes over), then the stale entry is deleted and the counts are stored, which
        allocates nothing. Complexity: O(1).
        """
        counters = self._classes[slab.size_class.index]
        before, had = counters.allocations, counters.requested
        allocations = before + 1
        requested = had + size
        forgotten = self._forgotten
        kept = size != slab.slot_size
        adopted = kept and forgotten == address  # the stale entry's key: a store, below
        if kept:
            self._requested[address] = size  # the one write that may allocate: first
        # --- commit ---
        if forgotten is not None and not adopted:
            del self._requested[forgotten]
        counters.saved_allocations = before
        counters.saved_requested = had
        self._adopted = adopted
        self._forgotten = None
        counters.allocations = allocations
        counters.requested = requested

    def revert_block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Undo the latest ``block_allocated`` of the class: the size it kept is deleted (or,
        if it took the stale entry over, that entry is stale again) and the counts saved
        then are stored back, which allocates nothing. Complexity: O(1).
        """
        counters = self._classes[slab.size_class.index]
        if self._adopted:
            self._forgotten = address
        elif size != slab.slot_size:
            del self._requested[address]
        counters.allocations = counters.saved_allocations
        counters.requested = counters.saved_requested

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        """Count the free; forget the block's requested size.

        All or nothing: the new counts are computed, then stored; the block's entry becomes
        the stale entry and the previous one is deleted. None of those writes allocates.
        Complexity: O(1).
        """
        counters = self._classes[slab.size_class.index]
        requested = self._requested
        forgotten = self._forgotten
        before, had = counters.frees, counters.requested
        frees = before + 1
        remaining = had - requested.get(address, slab.slot_size)
        kept = address in requested
        # --- commit ---
        if forgotten is not None:
            del requested[forgotten]
        counters.saved_frees = before
        counters.saved_requested = had
        self._forgotten = address if kept else None
        counters.frees = frees
        counters.requested = remaining

    def revert_block_freed(self, slab: MemorySlab, address: int) -> None:
        """Undo the latest ``block_freed`` of the class: the block's entry, stale, is valid
        again (the previous stale entry is gone, as if deleted by the next hook), and the
        counts saved then are stored back. Allocates nothing. Complexity: O(1).
        """
        counters = self._classes[slab.size_class.index]
        self._forgotten = None
        counters.frees = counters.saved_frees
        counters.requested = counters.saved_requested

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Count a created slab; raise the peaks of the class and of the mapped bytes.

        All or nothing: every value is computed before the stores. Complexity: O(size
        classes), for the mapped total (a new slab costs a system call anyway).
        """
        counters = self._classes[size_class.index]
        slabs = len(size_class.slabs)  # the core lists the slab before telling the policies
        peak = slabs if slabs > counters.slabs_peak else counters.slabs_peak
        created = counters.slabs_created
        if slab.serial >= self._first_serial:
            created += 1
        mapped = sum(len(c.slabs) for c in self.heap.size_classes) * self._slab_size
        mapped_peak = mapped if mapped > self._mapped_peak else self._mapped_peak
        counters.slabs_peak = peak
        counters.slabs_created = created
        self._mapped_peak = mapped_peak

    def counters(self) -> PolicyCounters:
        """A snapshot of the counters (the report calls it under the allocator's lock).

        Complexity: O(size classes).
        """
        return PolicyCounters(
            classes=tuple(
                ClassCounters(
                    allocations=c.allocations,
                    frees=c.frees,
                    slabs_peak=c.slabs_peak,
                    slabs_created=c.slabs_created,
                    slabs_reclaimed=c.slabs_at_bind + c.slabs_created - len(size_class.slabs),
                    requested_bytes=c.requested,
                )
                for size_class, c in zip(self.heap.size_classes, self._classes, strict=True)
            ),
            mapped_peak=self._mapped_peak,
        )

    def check(self) -> None:
        """Verify the counters against the heap (``validate()`` calls it).

        Raises:
            CorruptionError: a class holds more slabs than were announced to the policy or
                than its peak, the mapped peak is below the bytes mapped now, the requested
                bytes are not within the class's used slots, or more sizes are kept than
                blocks are live.

        Complexity: O(size classes).
        """
        slabs = 0
        for size_class, counters in zip(self.heap.size_classes, self._classes, strict=True):
            held = len(size_class.slabs)
            slabs += held
            announced = counters.slabs_at_bind + counters.slabs_created
            if held > announced or held > counters.slabs_peak:
                raise CorruptionError(
                    f"stats counts {announced} slabs announced and a peak of "
                    f"{counters.slabs_peak} in {size_class!r}"
                )
            if not 0 <= counters.requested <= size_class.live * size_class.slot_size:
                raise CorruptionError(
                    f"stats counts {counters.requested} requested bytes in {size_class!r}"
                )
        if self._mapped_peak < slabs * self._slab_size:
            raise CorruptionError(
                f"stats counts a mapped peak of {self._mapped_peak} bytes for {slabs} slabs"
            )
        forgotten = self._forgotten
        if forgotten is not None and forgotten not in self._requested:
            raise CorruptionError(f"stats' stale entry {forgotten:#x} is not in its table")
        if self.tracked_sizes > sum(c.live for c in self.heap.size_classes):
            raise CorruptionError(f"stats keeps {self.tracked_sizes} sizes, more than live")

    @property
    def tracked_sizes(self) -> int:
        """Live blocks whose requested size is kept (the dict's length, but for the stale
        entry of the latest free). Complexity: O(1)."""
        return len(self._requested) - (self._forgotten is not None)

    def unbind(self) -> None:
        """Drop the size table."""
        self._requested = {}
        self._forgotten = None

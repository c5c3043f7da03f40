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
        "allocations", "frees", "requested", "slabs", "slabs_created", "slabs_peak",
        "slabs_reclaimed",
    )

    def __init__(self) -> None:
        self.allocations = 0
        self.frees = 0
        self.requested = 0
        self.slabs = 0
        self.slabs_peak = 0
        self.slabs_created = 0
        self.slabs_reclaimed = 0


class Stats(Policy):
    """Count allocations, frees, requested bytes and slabs per class; track the mapped peak.

    What it changes: nothing in placement or lookup. It observes ``block_allocated``,
    ``block_freed``, ``slab_added`` and ``slab_removed``, and follows the report's
    :class:`pyslab.observe.CountsAllocations` protocol, so ``pyslab.observe.report(alloc)`` and
    ``pyslab.observe.report_dict(alloc)`` show its counters and the internal fragmentation and
    utilisation ratios (definitions in :mod:`pyslab.observe.heap_report`). Live blocks now and at
    peak, slabs now and large blocks come from the core (``alloc.stats()``): they are not
    counted twice.

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
    bound until they are freed. Slabs that existed then count toward ``slabs`` and the peaks
    but not ``slabs_created``.
    """

    name = "stats"
    description = "count allocations, frees, requested bytes and slabs per class, for report()"

    def bind(self, heap: Heap) -> None:
        """Start the counters; blocks already live are counted as filling their slots."""
        super().bind(heap)
        self._slab_size = heap.slab_size
        self._classes = [_Counters() for _ in heap.size_classes]
        self._requested: dict[int, int] = {}
        self._mapped = 0
        self._mapped_peak = 0
        # Slabs with a serial below this existed before bind: announced, not created.
        self._first_serial = 1 + max(
            (s.serial for c in heap.size_classes for s in c.slabs), default=-1
        )
        for size_class, counters in zip(heap.size_classes, self._classes, strict=True):
            counters.requested = size_class.live * size_class.slot_size

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Count the block and its requested size. Complexity: O(1)."""
        counters = self._classes[slab.size_class.index]
        counters.allocations += 1
        counters.requested += size
        if size != slab.slot_size:
            self._requested[address] = size

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        """Count the free; forget the block's requested size. Complexity: O(1)."""
        counters = self._classes[slab.size_class.index]
        counters.frees += 1
        counters.requested -= self._requested.pop(address, slab.slot_size)

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Count the slab and the mapped bytes, with their peaks. Complexity: O(1)."""
        counters = self._classes[size_class.index]
        counters.slabs += 1
        counters.slabs_peak = max(counters.slabs_peak, counters.slabs)
        if slab.serial >= self._first_serial:
            counters.slabs_created += 1
        self._mapped += self._slab_size
        self._mapped_peak = max(self._mapped_peak, self._mapped)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Count the slab given back. Complexity: O(1)."""
        counters = self._classes[size_class.index]
        counters.slabs -= 1
        counters.slabs_reclaimed += 1
        self._mapped -= self._slab_size

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
                    slabs_reclaimed=c.slabs_reclaimed,
                    requested_bytes=c.requested,
                )
                for c in self._classes
            ),
            mapped_peak=self._mapped_peak,
        )

    def check(self) -> None:
        """Verify the counters against the heap (``validate()`` calls it).

        Raises:
            CorruptionError: a class's slab count, the mapped bytes or the requested bytes
                disagree with the slabs, or more sizes are kept than blocks are live.

        Complexity: O(size classes).
        """
        slabs = 0
        for size_class, counters in zip(self.heap.size_classes, self._classes, strict=True):
            slabs += len(size_class.slabs)
            if counters.slabs != len(size_class.slabs):
                raise CorruptionError(
                    f"stats counts {counters.slabs} slabs in {size_class!r}"
                )
            if not 0 <= counters.requested <= size_class.live * size_class.slot_size:
                raise CorruptionError(
                    f"stats counts {counters.requested} requested bytes in {size_class!r}"
                )
        if self._mapped != slabs * self._slab_size:
            raise CorruptionError(f"stats counts {self._mapped} mapped bytes for {slabs} slabs")
        if len(self._requested) > sum(c.live for c in self.heap.size_classes):
            raise CorruptionError(f"stats keeps {len(self._requested)} sizes, more than live")

    @property
    def tracked_sizes(self) -> int:
        """Live blocks whose requested size is kept (the dict's length). Complexity: O(1)."""
        return len(self._requested)

    def unbind(self) -> None:
        """Drop the size table."""
        self._requested = {}

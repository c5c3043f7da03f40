"""The slab allocator: size-class routing, the hot path, re-entrancy, and the system fallback."""

from __future__ import annotations

import operator
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MethodType, TracebackType
from typing import Final, TypeVar

from . import _forking, _libc
from ._large import SystemFallback
from ._layout import DEFAULT_SIZE_CLASSES, DEFAULT_SLAB_SIZE, build_tables, check_layout
from ._layout import slot_alignment as _slot_alignment
from ._memory import WORD_SHIFT, WORDS, copy, fill
from .errors import (
    AllocatorClosedError,
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    PolicyError,
    PyslabError,
    PyslabWarning,
)
from .pages import LargeObjects, MmapPageSource, PageSource
from .policy import BlockOperations, ResolvedPolicy, resolve
from .registry import PolicySpec, parse_policies
from .slab import MemorySlab, SizeClass
from .stats import AllocatorStats, ClassStats

__all__ = ["SlabAllocator"]

WORD: Final[int] = _libc.POINTER_SIZE
_T = TypeVar("_T")
_MISALIGNED: Final[int] = WORD - 1
_OWNER_ATTRIBUTE: Final = "_pyslab_bound_to"


class SlabAllocator:
    """A slab allocator handing out real memory: addresses that C code can read and write.

    Args:
        size_classes: slot sizes, strictly ascending multiples of the pointer size, none larger
            than a slab. Default ``(8, 16, 32, 64, 128, 256, 512, 1024)``.
        slab_size: bytes per slab, a power-of-two multiple of the page size. Default 4096 (or
            the page size where pages are larger).
        policy: a :class:`~pyslab.Policy`, a registered name (``"dict-lookup"``), a
            composition ``"dict-lookup+reclaim"`` or a sequence of names and instances.
            Every composition starts from ``first-fit``. Default: ``first-fit`` alone.
        page_source: where slabs come from. Default: the policy's ``page_source`` decision if
            one provides it, else one ``mmap`` per slab. A source with ``large_objects()``
            also serves the blocks too large for any class.

    Raises:
        TypeError, ValueError: the layout is invalid (the message names the bad value).
        UnknownPolicyError: a policy name is not registered.

    The allocator is safe to call from many threads, and re-entrant calls on one thread (a
    finalizer run by the garbage collector in the middle of an allocation) neither deadlock nor
    corrupt it: they are served by the system fallback, or deferred until the outer call ends.
    """

    def __init__(
        self,
        size_classes: Sequence[int] = DEFAULT_SIZE_CLASSES,
        slab_size: int = DEFAULT_SLAB_SIZE,
        policy: PolicySpec = None,
        page_source: PageSource | None = None,
    ) -> None:
        classes = check_layout(size_classes, slab_size)
        self._slab_size: Final = slab_size
        self._classes: Final = tuple(
            SizeClass(i, slot, slab_size, _slot_alignment(slot, slab_size))
            for i, slot in enumerate(classes)
        )
        self._largest: Final = classes[-1]
        self._tables = build_tables(self._classes)
        resolved = resolve(parse_policies(policy))
        if page_source is None and resolved.page_source is not None:
            page_source = resolved.page_source()  # a policy may supply the source (issue 4)
        self._source: Final = page_source if page_source is not None else MmapPageSource()
        # A source may serve large blocks itself (an arena: no libc after start).
        large_objects = getattr(self._source, "large_objects", None)
        service: LargeObjects | None = large_objects() if large_objects is not None else None
        self._large: Final[LargeObjects] = service if service is not None else SystemFallback()
        self._lock = threading.RLock()
        # True while a call of this thread is inside the locked region: a call that finds it
        # set is re-entrant (a finalizer or signal handler interrupted the outer call).
        self._busy = False
        # Work done on behalf of re-entrant calls, completed when the outer call ends: a
        # (address, size) pair for a block libc served, an int for a deferred free.
        self._backlog: list[tuple[int, int] | int] = []
        self._queries = 0  # queries in progress on the thread that set busy (they nest)
        self._serial = 0
        self._reentrant_allocs = 0
        self._deferred_frees = 0
        self._closed = False
        self.deferred_errors: list[PyslabError] = []
        """Errors of deferred frees, which had no caller left to raise to (also warned)."""
        with self._lock:
            self._bind(resolved)
        _forking.track(self, _forking.ALLOCATORS)  # fork(): see pyslab._forking

    # --- public properties (the Heap protocol that policies see) ---------------------------

    @property
    def size_classes(self) -> tuple[SizeClass, ...]:
        """Every size class, smallest first."""
        return self._classes

    @property
    def slab_size(self) -> int:
        """Bytes per slab."""
        return self._slab_size

    @property
    def page_source(self) -> PageSource:
        """Where slabs are mapped from."""
        return self._source

    @property
    def policy(self) -> ResolvedPolicy:
        """The bound policy composition."""
        return self._policy

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def lock(self) -> threading.RLock:
        """The allocator's re-entrant lock: hold it to read slabs consistently."""
        return self._lock

    def class_for(self, size: int, align: int = WORD) -> SizeClass | None:
        """The size class that serves ``alloc(size, align)``, or None for the system fallback.

        Raises:
            TypeError, ValueError: as :meth:`alloc` for a bad size or alignment.

        Complexity: O(1).
        """
        return self._class_for(_checked_size(size, "size"), _checked_alignment(align))

    def take_blocks(self, size_class: SizeClass, count: int) -> list[int]:
        """Allocate up to ``count`` blocks of ``size_class`` under one lock (a magazine refill).

        Returns fewer, possibly none, when called re-entrantly (the heap may be half updated).

        Raises:
            MemoryError: no memory is left; the blocks already taken are given back first.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(count), plus what new slabs cost.
        """
        self._check_closed("take_blocks")
        return self._exclusively(
            "take_blocks", lambda: self._take_blocks(size_class, count), reentrant=list
        )

    def _take_blocks(self, size_class: SizeClass, count: int) -> list[int]:
        taken: list[int] = []
        try:
            for _ in range(count):
                taken.append(self._take(size_class, size_class.slot_size))
        except MemoryError:
            for address in taken:
                self._free_locked(address)
            raise
        return taken

    def return_blocks(self, addresses: Sequence[int]) -> None:
        """Free every block of ``addresses`` under one lock (a magazine flush).

        Called re-entrantly, the frees are deferred like any re-entrant free.

        Raises:
            InvalidFreeError: an address is not a live block; the ones before it are freed.

        Complexity: O(len(addresses)) with an O(1) owner lookup.
        """
        def free_each() -> None:
            for address in addresses:
                self._free_locked(address)

        def defer_each() -> None:
            self._backlog.extend(addresses)
            self._deferred_frees += len(addresses)

        self._exclusively("return_blocks", free_each, reentrant=defer_each)

    # --- allocation -------------------------------------------------------------------------

    def alloc(self, size: int, align: int = WORD) -> int:
        """Allocate ``size`` bytes aligned to ``align`` and return the block's address.

        The smallest class whose slots fit ``size`` and are aligned to ``align`` serves the
        request; a larger request, or an alignment no class gives, goes to libc.

        Raises:
            TypeError: ``size`` or ``align`` is not an int.
            ValueError: ``size`` is not positive or ``align`` is not a power of two.
            MemoryError: no memory is left; the allocator is unchanged.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(1) while the current slab of the class has a free slot; otherwise the
        policy's ``select_slab`` (O(slabs) for ``first-fit``) or one ``mmap``.
        """
        if type(size) is int and type(align) is int and 0 < size <= self._largest:
            table = self._tables.get(align)
            if table is not None:
                size_class = table[size]
                if size_class is not None:
                    # Explicit acquire/release: a ``with`` block costs a bound-method object
                    # per call, which doubled the cost of the lock.
                    lock = self._lock
                    lock.acquire()
                    if self._busy:
                        try:
                            return self._alloc_reentrant(size, align)
                        finally:
                            lock.release()
                    self._busy = True
                    try:
                        return self._take(size_class, size)
                    finally:
                        self._busy = False
                        if self._backlog:
                            self._settle_and_release()
                        else:
                            lock.release()
        return self._alloc_unusual(size, align)

    def _take_plain(self, size_class: SizeClass, size: int) -> int:
        # Lock held, busy set. Invariant: current is None or has a free slot.
        slab = size_class.current or self._refill(size_class)
        address = slab.free
        if address:
            slab.free = WORDS[address >> WORD_SHIFT]
        else:
            address = slab.bump
            slab.bump = address + slab.slot_size
        slab.live |= 1 << ((address - slab.base) >> WORD_SHIFT)
        used = slab.used + 1
        slab.used = used
        if used == 1:
            del size_class.empty[slab]
        if used == slab.capacity:
            size_class.current = None
            size_class.full += 1
        live = size_class.live + 1
        size_class.live = live
        if live > size_class.peak:
            size_class.peak = live
        return address

    def _take_observed(self, size_class: SizeClass, size: int) -> int:
        slab = size_class.current or self._refill(size_class)
        address = self._take_plain(size_class, size)
        self._block_allocated(slab, address, size)
        return address

    def _refill(self, size_class: SizeClass) -> MemorySlab:
        slab = self._select_slab(size_class) or self._new_slab(size_class)
        size_class.current = slab
        return slab

    def _new_slab(self, size_class: SizeClass) -> MemorySlab:
        serial = self._serial
        color = self._slab_color(size_class, serial)
        if (
            type(color) is not int
            or color < 0
            or color % size_class.alignment
            or color + size_class.slot_size > self._slab_size
        ):
            raise PolicyError(
                f"slab_color gave {color!r} for the {size_class.slot_size}-byte class: it must "
                f"be a multiple of {size_class.alignment} leaving room for one slot"
            )
        base = self._source.map_slab(self._slab_size)
        try:
            slab = MemorySlab(size_class, base, color, self._slab_size, serial)
            # The policy learns of the slab before the core lists it, and nothing between the
            # two can be interrupted: an exception (a signal handler's, at a call) leaves at
            # worst a mapping that nobody lists, never a slab one side lists and not the other.
            if self._slab_added is not None:
                self._slab_added(size_class, slab)
        except BaseException:
            self._source.release_slab(base, self._slab_size)
            raise
        self._serial = serial + 1
        size_class.slabs[slab] = None
        size_class.empty[slab] = None
        return slab

    def _alloc_reentrant(self, size: int, align: int) -> int:
        # A finalizer or signal handler interrupted an allocator call on this thread: the slab
        # state may be half-updated, so libc serves the block and the outer call records it.
        address = _libc.system_malloc(size, align)
        self._backlog.append((address, size))
        self._reentrant_allocs += 1
        return address

    def _alloc_unusual(self, size: object, align: object) -> int:
        """Everything but a small request of a valid size: closed, bad input, or large."""
        if self._closed:
            raise AllocatorClosedError(f"alloc({size!r}) on a closed allocator")
        size, align = _checked_size(size, "size"), _checked_alignment(align)
        if self._class_for(size, align) is not None:
            return SlabAllocator.alloc(self, size, align)  # the core's, under any front end
        return self._exclusively(
            "alloc",
            lambda: self._large.allocate(size, align),
            reentrant=lambda: self._alloc_reentrant(size, align),
        )

    # The two helpers below run ``work`` inside their own try/finally rather than as context
    # managers: a signal handler's exception (Ctrl-C) can strike at the entry of any Python
    # function, including a context manager's ``__exit__``, which would then never clear the
    # busy flag; a ``finally`` in the same frame always does.

    def _exclusively(
        self, operation: str, work: Callable[[], _T], reentrant: Callable[[], _T] | None = None
    ) -> _T:
        """Run ``work`` under the lock as this thread's outermost allocator call (slow paths).

        When the call is re-entrant (another call of this thread is in progress, its updates
        possibly half done), ``reentrant`` runs instead, leaving the heap alone. On the way
        out, completes what re-entrant calls left in the backlog.

        Raises:
            PyslabError: re-entrant, and no ``reentrant`` alternative was given.
        """
        with self._lock:
            if self._busy:
                if reentrant is None:
                    raise PyslabError(f"{operation}() cannot run inside another allocator call")
                return reentrant()
            self._busy = True
            try:
                return work()
            finally:
                self._busy = False
                if self._backlog:
                    self._settle()

    def _read(self, operation: str, work: Callable[[], _T], *, consistent: bool = False) -> _T:
        """Run the query ``work`` under the lock with the heap marked busy.

        A signal handler or finalizer that allocates during the walk then takes the
        re-entrant path instead of changing the dicts being walked. Queries nest (``report``
        reads ``stats``). A query made from inside a mutating call (a policy hook, a finalizer)
        reads the heap as the interrupted call left it, which may be half updated: counts can
        be off by one, nothing is changed or crashed; a query that must see a ``consistent``
        heap (``validate``, ``heap_map``) is refused instead.

        Raises:
            PyslabError: a ``consistent`` query from inside a mutating call.
        """
        with self._lock:
            if self._busy and not self._queries:
                if consistent:
                    raise PyslabError(f"{operation}() cannot run inside another allocator call")
                return work()
            outermost = not self._busy
            self._busy = True
            self._queries += 1
            try:
                return work()
            finally:
                self._queries -= 1
                if outermost:
                    self._busy = False
                    if self._backlog:
                        self._settle()

    def _class_for(self, size: int, align: int) -> SizeClass | None:
        """The class serving a valid ``size`` and ``align``, or None (system fallback)."""
        table = self._tables.get(align)
        return table[size] if table is not None and size <= self._largest else None

    def calloc(self, count: int, size: int, align: int = WORD) -> int:
        """Allocate ``count * size`` zeroed bytes and return the block's address.

        Raises:
            TypeError, ValueError: as :meth:`alloc`, for ``count`` and ``size``.
            MemoryError: no memory is left, or the product exceeds the address space.

        Complexity: as :meth:`alloc`, plus zeroing the block.
        """
        count, size = _checked_size(count, "count"), _checked_size(size, "size")
        total = count * size
        if total > sys.maxsize:
            raise MemoryError(f"calloc({count}, {size}) asks for more than the address space")
        address = self.alloc(total, align)
        fill(address, 0, total)
        return address

    def realloc(self, ptr: int | None, size: int, align: int = WORD) -> int:
        """Resize the block at ``ptr`` to ``size`` bytes, keeping its contents.

        The block stays where it is when its class also serves ``size`` (and ``align``) and no
        front-end policy is bound; otherwise a new block is allocated, the contents copied and
        the old block freed.
        ``realloc(None, size)`` or ``realloc(0, size)`` allocates.

        Raises:
            InvalidFreeError, DoubleFreeError: ``ptr`` is not a live block (nothing changes).
            TypeError, ValueError, MemoryError: as :meth:`alloc` (the old block stays live).

        Complexity: O(1) in place, otherwise an allocation, a copy and a free.
        """
        if ptr is None or ptr == 0:
            return self.alloc(size, align)
        size, align = _checked_size(size, "size"), _checked_alignment(align)
        with self._lock:
            old_size = self.usable_size(ptr)
            if not self._policy.frontends:  # a front end may lay blocks out its own way
                slab = self._find_owner(ptr)
                if slab is not None and self._class_for(size, align) is slab.size_class:
                    return ptr
            new = self.alloc(size, align)
            copy(new, ptr, min(old_size, size))
            self.free(ptr)
            return new

    # --- freeing ----------------------------------------------------------------------------

    def free(self, ptr: int | None) -> None:
        """Give the block at ``ptr`` back. ``free(0)`` and ``free(None)`` do nothing, as in C.

        Raises:
            InvalidFreeError: ``ptr`` is not the start of a block of this allocator (foreign,
                inside a slot, or a slot never handed out).
            DoubleFreeError: the block is already free.
            TypeError: ``ptr`` is not an int or None.
            AllocatorClosedError: the allocator was closed.
            In every case the allocator is exactly as it was.

        Complexity: the policy's ``find_owner`` (O(1) with ``dict-lookup``, O(slabs) with
        ``first-fit``), then O(1); releasing an empty slab costs one ``munmap``.
        """
        if type(ptr) is not int or ptr <= 0 or ptr & _MISALIGNED:
            self._free_unusual(ptr)
            return
        lock = self._lock
        lock.acquire()
        if self._busy:
            self._backlog.append(ptr)
            self._deferred_frees += 1
            lock.release()
            return
        self._busy = True
        try:
            slab = self._find_owner(ptr)
            if slab is None:
                self._free_large(ptr)
            else:
                self._give_back(slab, ptr)
        finally:
            self._busy = False
            if self._backlog:
                self._settle_and_release()
            else:
                lock.release()

    def _free_locked(self, ptr: int) -> None:
        """``free`` for the slow paths (backlog, batches): lock held, busy set."""
        if type(ptr) is not int or ptr <= 0 or ptr & _MISALIGNED:
            raise self._bad_address(ptr, self._find_owner(ptr) if ptr > 0 else None)
        slab = self._find_owner(ptr)
        if slab is None:
            self._free_large(ptr)
        else:
            self._give_back(slab, ptr)

    def _give_back_plain(self, slab: MemorySlab, ptr: int) -> None:
        # Lock held, busy set. Every check comes before the first write, so that a rejected
        # address leaves the slab exactly as it was.
        bit = 1 << ((ptr - slab.base) >> WORD_SHIFT)
        live = slab.live
        if not live & bit:
            raise self._bad_address(ptr, slab)
        # From the first write to the last, no Python function is called: a signal handler
        # (Ctrl-C) runs only at a call, so an exception it raises finds the heap consistent.
        slab.live = live ^ bit
        WORDS[ptr >> WORD_SHIFT] = slab.free
        slab.free = ptr
        used = slab.used
        slab.used = used - 1
        size_class = slab.size_class
        size_class.live -= 1
        if used == slab.capacity:
            size_class.full -= 1
            if size_class.current is None:
                size_class.current = slab
        if used == 1:
            size_class.empty[slab] = None
        # The core is consistent here; the policy is asked only now.
        if used == slab.capacity and self._slab_refilled is not None:
            self._slab_refilled(size_class, slab)
        if used == 1 and not self._keep_empty(size_class, slab):
            self._release_slab(size_class, slab)

    def _give_back_observed(self, slab: MemorySlab, ptr: int) -> None:
        self._give_back_plain(slab, ptr)
        self._block_freed(slab, ptr)

    def _release_slab(self, size_class: SizeClass, slab: MemorySlab) -> None:
        if self._slab_removed is not None:
            self._slab_removed(size_class, slab)
        del size_class.slabs[slab]
        del size_class.empty[slab]
        if size_class.current is slab:
            size_class.current = None
        self._source.release_slab(slab.base, self._slab_size)

    def _free_large(self, ptr: int) -> None:
        if not self._large.holds(ptr):
            raise self._bad_address(ptr, None)
        self._large.release(ptr)

    def _free_unusual(self, ptr: object) -> None:
        if ptr is None or (type(ptr) is int and ptr == 0):
            return
        if type(ptr) is not int:
            raise TypeError(f"free() takes an address (int) or None, not {ptr!r}")
        with self._lock:
            raise self._bad_address(ptr, self._find_owner(ptr) if ptr > 0 else None)

    def _bad_address(self, ptr: int, slab: MemorySlab | None) -> InvalidFreeError:
        """The error for an address that is not a live block's start (state untouched)."""
        if slab is None:
            if self._large.was_freed(ptr):
                return DoubleFreeError(f"double free of the large block at {ptr:#x}", ptr)
            return InvalidFreeError(f"{ptr:#x} was not allocated by this allocator", ptr)
        where = f"the {slab.slot_size}-byte slab at {slab.base:#x}"
        if not slab.first <= ptr < slab.end:
            return InvalidFreeError(f"{ptr:#x} lies in {where} but outside every slot", ptr)
        offset = (ptr - slab.first) % slab.slot_size
        if offset:
            return InvalidFreeError(
                f"{ptr:#x} is inside the slot at {ptr - offset:#x} of {where} "
                f"(offset {offset}), not at the start of a block", ptr,
            )
        if ptr >= slab.bump:
            return InvalidFreeError(f"{ptr:#x} is a slot of {where} never handed out", ptr)
        return DoubleFreeError(f"double free of {ptr:#x} in {where}", ptr)

    # --- re-entrancy --------------------------------------------------------------------------

    def _settle_and_release(self) -> None:
        try:
            self._settle()
        finally:
            self._lock.release()

    def _settle(self) -> None:
        """Complete what re-entrant calls left in the backlog. Lock held, busy clear.

        Never raises but for the unforeseen (its caller releases the lock after it): an
        invalid deferred free is recorded and warned, since its caller is gone.
        """
        errors: list[PyslabError] = []
        self._busy = True
        try:
            backlog = self._backlog
            while backlog:
                item = backlog.pop(0)
                if isinstance(item, tuple):
                    self._large.record(*item)
                    continue
                try:
                    self._free_locked(item)
                except PyslabError as error:
                    errors.append(error)
        finally:
            self._busy = False
        for failure in errors:
            self.deferred_errors.append(failure)
            warnings.warn(f"deferred free failed: {failure}", PyslabWarning, stacklevel=3)

    # --- queries ------------------------------------------------------------------------------

    def owns(self, ptr: int) -> bool:
        """True when ``ptr`` is the start of a live block of this allocator.

        Complexity: as the owner lookup of :meth:`free`.
        """
        if type(ptr) is not int or ptr <= 0 or self._closed:
            return False
        with self._lock:
            slab = self._find_owner(ptr)
            return self._large.holds(ptr) if slab is None else slab.is_live(ptr)

    def usable_size(self, ptr: int) -> int:
        """Bytes usable at ``ptr``: the slot size, or the requested size of a large block.

        Raises:
            InvalidFreeError, DoubleFreeError: ``ptr`` is not a live block.
        """
        if type(ptr) is not int:
            raise TypeError(f"usable_size() takes an address (int), not {ptr!r}")
        with self._lock:
            if self._closed:
                raise AllocatorClosedError(f"usable_size({ptr:#x}) on a closed allocator")
            slab = self._find_owner(ptr) if ptr > 0 else None
            if slab is None:
                if self._large.holds(ptr):
                    return self._large.sizes[ptr]
            elif slab.is_live(ptr):
                return slab.slot_size
            raise self._bad_address(ptr, slab)

    def stats(self) -> AllocatorStats:
        """A consistent snapshot of the allocator (see :meth:`_read` for calls from a hook).

        Complexity: O(slabs) (the slot total sums each slab's capacity: colored slabs differ).
        """
        return self._read("stats", self._snapshot)

    def _snapshot(self) -> AllocatorStats:
        cached: dict[int, int] = {}
        for held in self._policy.cached_blocks:
            for slot_size, count in held().items():
                cached[slot_size] = cached.get(slot_size, 0) + count
        classes = tuple(
            ClassStats(
                slot_size=c.slot_size,
                slabs=len(c.slabs),
                empty_slabs=len(c.empty),
                total_slots=sum(s.capacity for s in c.slabs),
                used_slots=c.live,
                peak_used=c.peak,
                cached_slots=cached.get(c.slot_size, 0),
            )
            for c in self._classes
        )
        return AllocatorStats(
            policy=self._policy.name,
            slab_size=self._slab_size,
            classes=classes,
            mapped_bytes=self._slab_size * sum(c.slabs for c in classes),
            large_blocks=len(self._large.sizes),
            large_bytes=self._large.total,
            reentrant_allocs=self._reentrant_allocs,
            deferred_frees=self._deferred_frees,
            caches=tuple(cache.stats() for cache in getattr(self, "_caches", {}).values()),
        )

    def slabs(self) -> list[MemorySlab]:
        """Every slab, class by class, oldest first (a copy: safe to keep)."""
        return self._read("slabs", lambda: [slab for c in self._classes for slab in c.slabs])

    # --- policies -----------------------------------------------------------------------------

    def set_policy(self, policy: PolicySpec) -> None:
        """Replace the policy of a live allocator. No live block moves or is lost.

        The new policies are bound and told of every existing slab; empty slabs are then
        offered to the new ``keep_empty``.

        Raises:
            UnknownPolicyError, PolicyError: the new policy cannot be built or bound; the old
                one stays in place.
        """
        resolved = resolve(parse_policies(policy))
        self._check_closed("set_policy")
        with self._lock:
            old = self._policy
            self._flush_policies("set_policy")  # held blocks go back before their holder goes
            self._exclusively("set_policy", lambda: self._rebind(old, resolved))

    def _rebind(self, old: ResolvedPolicy, resolved: ResolvedPolicy) -> None:
        self._bind(resolved)
        for policy in old.policies:
            policy.unbind()
            setattr(policy, _OWNER_ATTRIBUTE, None)
        for size_class in self._classes:
            for slab in list(size_class.empty):
                if not self._keep_empty(size_class, slab):
                    self._release_slab(size_class, slab)

    def _bind(self, resolved: ResolvedPolicy) -> None:
        for policy in resolved.policies:
            owner = getattr(policy, _OWNER_ATTRIBUTE, None)
            if owner is not None and owner is not self:
                raise PolicyError(f"policy {policy!r} is already bound to another allocator")
        for policy in resolved.policies:
            setattr(policy, _OWNER_ATTRIBUTE, self)
            policy.bind(self)
        if resolved.slab_added is not None:
            for size_class in self._classes:
                for slab in size_class.slabs:
                    resolved.slab_added(size_class, slab)
        self._policy = resolved
        self._select_slab = resolved.select_slab
        self._find_owner = resolved.find_owner
        self._keep_empty = resolved.keep_empty
        self._slab_color = resolved.slab_color
        self._slab_added = resolved.slab_added
        self._slab_removed = resolved.slab_removed
        self._slab_refilled = resolved.slab_refilled
        self._block_allocated: Callable[[MemorySlab, int, int], None] = (
            resolved.block_allocated or _no_op
        )
        self._block_freed: Callable[[MemorySlab, int], None] = resolved.block_freed or _no_op
        observed = resolved.observes_blocks
        self._take = self._take_observed if observed else self._take_plain
        self._give_back = self._give_back_observed if observed else self._give_back_plain
        self._bind_frontends(resolved)

    _FRONT_OPERATIONS: Final = ("alloc", "free", "usable_size", "owns")

    def _bind_frontends(self, resolved: ResolvedPolicy) -> None:
        """Make the public block operations the outermost front end's, bound once.

        Without a front end the instance has none of these attributes and the class methods
        serve directly: the plain path pays nothing for the mechanism.
        """
        for name in self._FRONT_OPERATIONS:
            self.__dict__.pop(name, None)
        if not resolved.frontends:
            return
        operations: BlockOperations = _CoreOperations(
            alloc=MethodType(SlabAllocator.alloc, self),
            free=MethodType(SlabAllocator.free, self),
            usable_size=MethodType(SlabAllocator.usable_size, self),
            owns=MethodType(SlabAllocator.owns, self),
        )
        for wrap in resolved.frontends:
            operations = wrap(operations)
        for name in self._FRONT_OPERATIONS:
            # shadows the class method for this instance only (see the docstring)
            self.__dict__[name] = getattr(operations, name)

    # --- whole-heap operations ----------------------------------------------------------------

    def shrink(self) -> int:
        """Return every cached empty slab to the page source, whatever the policy.

        Policies that hold blocks (per-thread caches) give them back first (``flush``).
        Returns the number of bytes released. Complexity: O(empty slabs + held blocks).
        """
        self._check_closed("shrink")
        with self._lock:
            self._flush_policies("shrink")
            return self._exclusively("shrink", self._release_empty_slabs)

    def _release_empty_slabs(self) -> int:
        released = 0
        for size_class in self._classes:
            for slab in list(size_class.empty):
                self._release_slab(size_class, slab)
                released += self._slab_size
        return released

    def _flush_policies(self, operation: str) -> None:
        """Have the object caches reap their free slabs (running their destructors) and the
        policies give back the blocks they hold. Lock held, heap not busy: the blocks go back
        through the ordinary paths (``free``, ``return_blocks``)."""
        if self._busy:
            raise PyslabError(f"{operation}() cannot run inside another allocator call")
        for cache in getattr(self, "_caches", {}).values():
            if not cache.closed:
                cache.reap()
        if self._policy.flush is not None:
            self._policy.flush()

    def validate(self) -> None:
        """Check every invariant of the package docstring; raise on the first one broken.

        Raises:
            CorruptionError: naming the slab, address and invariant.

        Complexity: O(slabs + free slots).
        """
        with self._lock:
            # Invariant 8 holds between calls: checked before this call can defer anything.
            if self._backlog and not self._busy:
                raise CorruptionError(f"{len(self._backlog)} re-entrant operations not settled")
        self._read("validate", self._check_invariants, consistent=True)

    def _check_invariants(self) -> None:
        if self._closed:
            return
        seen_bases: set[int] = set()
        for size_class in self._classes:
            live = sum(_checked_slab(self, size_class, s, seen_bases) for s in size_class.slabs)
            _check_class(size_class, live)
        if self._policy.check is not None:
            self._policy.check()
        if self._source.mapped_bytes < len(seen_bases) * self._slab_size:
            raise CorruptionError(
                f"the page source reports {self._source.mapped_bytes} bytes mapped for "
                f"{len(seen_bases)} slabs of {self._slab_size}"
            )

    def close(self) -> None:
        """Return every slab to the page source and every large block to libc.

        Every address handed out becomes invalid. Calling it twice is harmless.

        Raises:
            PyslabError: called from inside another call of this allocator.
        """
        with self._lock:
            if self._closed:
                return
            self._flush_policies("close")  # every cache accounted for before the pages go
            self._exclusively("close", self._release_everything)

    def _release_everything(self) -> None:
        for name in self._FRONT_OPERATIONS:
            self.__dict__.pop(name, None)  # the core's methods now refuse every call
        for size_class in self._classes:
            for slab in size_class.slabs:
                self._source.release_slab(slab.base, self._slab_size)
            size_class.slabs.clear()
            size_class.empty.clear()
            size_class.current = None
            size_class.live = size_class.full = 0
        self._large.close()
        self._source.close()
        for policy in self._policy.policies:
            policy.unbind()
            setattr(policy, _OWNER_ATTRIBUTE, None)
        self._closed = True
        self._tables = {}
        self._find_owner = self._closed_lookup

    def _closed_lookup(self, ptr: int) -> MemorySlab | None:
        raise AllocatorClosedError(f"{ptr:#x} used after the allocator was closed")

    def _check_closed(self, operation: str) -> None:
        if self._closed:
            raise AllocatorClosedError(f"{operation}() on a closed allocator")

    def __enter__(self) -> SlabAllocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- ctypes buffers and the C-callable allocator (issue 3) ---------------------------------

    # The types are named for the type checker only: pyslab.buffers and pyslab.cabi are imported
    # when first used, never with the allocator (they import this module).
    import typing as _typing

    if _typing.TYPE_CHECKING:
        import ctypes as _ctypes

        from .buffers import CT as _CT
        from .buffers import SlabBuffers as _SlabBuffers
        from .cabi import CFunctions as _CFunctions
    del _typing

    def create_string_buffer(
        self, init: bytes | int, size: int | None = None
    ) -> _ctypes.Array[_ctypes.c_char]:
        """``ctypes.create_string_buffer(init, size)``, its bytes in a block of this allocator.

        Same arguments, errors and result type as ctypes'; the block is freed when the buffer
        is collected (see :mod:`pyslab.buffers` for the lifetime rules).

        Raises:
            TypeError, ValueError: as ``ctypes.create_string_buffer`` for the same arguments.
            MemoryError: no memory is left.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(1) plus zeroing the buffer.
        """
        try:
            buffers = self._pyslab_ctypes_buffers  # the hot path: one lookup, no extra call
        except AttributeError:
            buffers = self._ctypes_buffers()
        return buffers.create_string_buffer(init, size)

    def create_unicode_buffer(
        self, init: str | int, size: int | None = None
    ) -> _ctypes.Array[_ctypes.c_wchar]:
        """``ctypes.create_unicode_buffer(init, size)``, its characters in this allocator.

        Raises:
            TypeError, ValueError: as ``ctypes.create_unicode_buffer`` for the same arguments.
            MemoryError, AllocatorClosedError: as :meth:`create_string_buffer`.

        Complexity: O(1) plus zeroing the buffer.
        """
        return self._ctypes_buffers().create_unicode_buffer(init, size)

    def new(self, ctype: type[_CT], /, *init: object, **fields: object) -> _CT:
        """An instance of the ctypes type ``ctype`` in a block of this allocator, initialised as
        ``ctype(*init, **fields)`` would be (Structure, Union, array, pointer or simple type).

        Raises:
            TypeError: ``ctype`` is not a ctypes data type (the message names it), or the
                arguments do not fit it.
            MemoryError, AllocatorClosedError: as :meth:`create_string_buffer`.

        Complexity: O(size of the type), plus the type's ``__init__``.
        """
        return self._ctypes_buffers().new(ctype, *init, **fields)

    def c_functions(self) -> _CFunctions:
        """C function pointers for ``malloc``, ``calloc``, ``realloc`` and ``free`` served by this
        allocator, for C libraries that take allocator callbacks (see :mod:`pyslab.cabi`).

        The same object on every call; it lives as long as the allocator. Callable from any
        thread. A failure inside a callback returns NULL to C and is recorded in the object's
        ``failures``, never raised into C.

        Complexity: O(1) (four ctypes callbacks built on the first call).
        """
        from .cabi import c_functions_of

        return c_functions_of(self)

    _pyslab_ctypes_buffers: _SlabBuffers
    """Set in the instance by :func:`pyslab.buffers.buffers_of` on first use."""

    def _ctypes_buffers(self) -> _SlabBuffers:
        try:
            return self._pyslab_ctypes_buffers  # the module is imported once, not per buffer
        except AttributeError:
            from .buffers import buffers_of

            return buffers_of(self)

    # --- typed slabs and object caches (issue 5) -----------------------------------------------

    # Named for the type checker only: pyslab.cache is imported when cache() is first called.
    import typing as _typing

    if _typing.TYPE_CHECKING:
        from typing import Any as _Any

        from .cache import ObjectCache
        from .typed import CT
    del _typing

    _caches: dict[str, ObjectCache[_Any]]
    """Open caches by name, oldest first; set by the first cache() (read with a default)."""

    def cache(
        self,
        ctype: type[CT],
        ctor: Callable[[CT], object] | None = None,
        dtor: Callable[[CT], object] | None = None,
        name: str | None = None,
    ) -> ObjectCache[CT]:
        """A cache of constructed objects of ``ctype`` (Bonwick's ``kmem_cache_create``).

        ``cache.alloc()`` returns an object whose ``ctor`` ran once, when its slab was built;
        ``cache.free(obj)`` keeps it constructed; ``dtor`` runs when a slab is reclaimed
        (``cache.reap()``, ``cache.close()``). The cache's slabs are blocks of this allocator,
        and it appears under ``name`` in :meth:`stats` (``caches``). See :mod:`pyslab.cache`.

        Raises:
            TypeError: ``ctype`` is not a ctypes type, ``ctor``/``dtor`` not callable, ``name``
                not a string.
            ValueError: ``name`` is empty or already a cache of this allocator's.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(1): no memory is set up before the first ``alloc()``.
        """
        from .cache import ObjectCache

        return ObjectCache(self, ctype, ctor, dtor, name)

    def caches(self) -> tuple[ObjectCache[_Any], ...]:
        """Every open cache of this allocator, oldest first. Complexity: O(caches)."""
        with self._lock:
            return tuple(self._cache_registry().values())

    def _cache_registry(self) -> dict[str, ObjectCache[_Any]]:
        try:
            return self._caches
        except AttributeError:
            self._caches = {}
            return self._caches

    def _register_cache(self, cache: ObjectCache[_Any], name: str | None) -> str:
        """Enter ``cache`` in the registry under ``name`` (default: its type's name, made
        unique with ``-2``, ``-3``...) and return the name."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a cache name is a str, not {name!r}")
        if name == "":
            raise ValueError("a cache name cannot be empty")
        with self._lock:
            self._check_closed("cache")
            caches = self._cache_registry()
            if name is None:
                name = base = cache.ctype.__name__
                suffix = 1
                while name in caches:
                    suffix += 1
                    name = f"{base}-{suffix}"
            elif name in caches:
                raise ValueError(f"this allocator already has a cache named {name!r}")
            caches[name] = cache
            return name

    def _unregister_cache(self, cache: ObjectCache[_Any]) -> None:
        """Drop a closed cache from the registry (a no-op if it is not there)."""
        with self._lock:
            caches = self._cache_registry()
            if caches.get(cache.name) is cache:
                del caches[cache.name]

    # --- statistics report (issue 4) -----------------------------------------------------------

    def report(self) -> str:
        """A readable report of the heap, like ``/proc/slabinfo``: a line per size class, the
        mapped and large bytes, and the fragmentation ratios defined in :mod:`pyslab.report`.

        With the ``stats`` policy in the composition it also shows allocations, frees,
        requested bytes and peaks. Raises AllocatorClosedError once closed.

        Complexity: O(slabs).
        """
        from .report import build_report  # the report is rare: its module loads on first use

        self._check_closed("report")
        return self._read("report", lambda: build_report(self).format())

    def report_dict(self) -> dict[str, object]:
        """The same report as plain data (:meth:`pyslab.report.HeapReport.to_dict`), ready for
        ``json.dumps``. Raises AllocatorClosedError once closed. Complexity: O(slabs)."""
        from .report import build_report

        self._check_closed("report_dict")
        return self._read("report_dict", lambda: build_report(self).to_dict())

    # --- heap pictures (issue 9) ---------------------------------------------------------------

    # The snapshot types are named for the type checker only: pyslab.heapmap is imported when
    # heap_map() is first called, never with the allocator.
    import typing as _typing

    if _typing.TYPE_CHECKING:
        from .heapmap import HeapMap
    del _typing

    def heap_map(self) -> HeapMap:
        """A frozen snapshot of every slab: its slots (live, free-linked or uncarved) and the
        order of its free list, read from the next pointers in memory.

        ``print(alloc.heap_map())`` draws it as text; :func:`pyslab.render_map` as a picture.
        The snapshot is taken under the lock, so it is consistent even while other threads
        allocate and free. It shows the slabs as the core sees them: a block that a policy's
        front end (a per-thread cache) holds counts as live.

        Raises:
            AllocatorClosedError: the allocator was closed.
            PyslabError: called from inside another call of this allocator (a finalizer or a
                policy hook), when the heap may be half-updated.
            CorruptionError: a slab's bitmap, count or free list is inconsistent (it names the
                slab); nothing is changed.

        Complexity: O(slots of every slab); reads every free slot's next pointer.
        """
        from .heapmap import capture

        self._check_closed("heap_map")
        classes, slab_size = self._classes, self._slab_size
        return self._read(
            "heap_map",
            lambda: capture(classes, slab_size, self._policy.name, self._serial),
            consistent=True,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{sum(len(c.slabs) for c in self._classes)} slabs"
        return f"<SlabAllocator policy={self._policy.name} {state}>"


def _no_op(*_: object) -> None:
    pass


@dataclass(frozen=True)
class _CoreOperations:
    """The core's own block operations, handed to the innermost front end."""

    alloc: Callable[..., int]  # (size, align=WORD): Callable cannot spell a default
    free: Callable[[int | None], None]
    usable_size: Callable[[int], int]
    owns: Callable[[int], bool]


def _checked_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an int, not {value!r}")
    number = operator.index(value)
    if number <= 0:
        raise ValueError(f"{what} must be a positive int, not {number}")
    return number


def _checked_alignment(value: object) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"align must be an int, not {value!r}")
    number = operator.index(value)
    if number <= 0 or number & (number - 1):
        raise ValueError(f"align must be a power of two, not {number}")
    return number


def _checked_slab(
    allocator: SlabAllocator, size_class: SizeClass, slab: MemorySlab, seen_bases: set[int]
) -> int:
    """Check one slab's invariants (1-6 of the package docstring); return its live count."""

    def fail(what: str) -> CorruptionError:
        return CorruptionError(f"{slab!r}: {what}")

    if slab.size_class is not size_class or slab.base in seen_bases:
        raise fail("listed in the wrong class, or twice")
    seen_bases.add(slab.base)
    if slab.base % allocator.slab_size:
        raise fail(f"base is not aligned to the slab size {allocator.slab_size}")
    if not slab.base <= slab.first <= slab.bump <= slab.end <= slab.base + allocator.slab_size:
        raise fail("first <= bump <= end within the slab does not hold")
    if (slab.bump - slab.first) % slab.slot_size:
        raise fail(f"bump {slab.bump:#x} is not at a slot boundary")
    if allocator.policy.find_owner(slab.first) is not slab:
        raise fail("the policy's find_owner does not find it")
    carved = (slab.bump - slab.first) // slab.slot_size
    starts = range(slab.first, slab.bump, slab.slot_size)
    live_bits = {slab.base + (i << WORD_SHIFT) for i in range(slab.live.bit_length())
                 if slab.live >> i & 1}
    if not live_bits <= set(starts):
        raise fail("a live bit is set for an address that is not a carved slot")
    if len(live_bits) != slab.used:
        raise fail(f"used is {slab.used} but {len(live_bits)} blocks are marked live")
    free_nodes: set[int] = set()
    for node in slab.free_list():
        if node not in starts or node in live_bits or node in free_nodes:
            raise fail(f"free-list node {node:#x} is not a free carved slot, or repeats")
        free_nodes.add(node)
    if len(free_nodes) + slab.used != carved:
        raise fail(
            f"{len(free_nodes)} free-list nodes + {slab.used} used != {carved} carved slots"
        )
    if (slab.used == 0) != (slab in size_class.empty):
        raise fail("the class's empty set disagrees with used")
    return slab.used


def _check_class(size_class: SizeClass, live: int) -> None:
    full = sum(1 for slab in size_class.slabs if slab.used == slab.capacity)
    if full != size_class.full:
        raise CorruptionError(f"{size_class!r}: full is {size_class.full} but {full} slabs are")
    if live != size_class.live:
        raise CorruptionError(
            f"{size_class!r}: live is {size_class.live} but its slabs hold {live} blocks"
        )
    if size_class.peak < live:
        raise CorruptionError(f"{size_class!r}: peak {size_class.peak} below live {live}")
    if not set(size_class.empty) <= set(size_class.slabs):
        raise CorruptionError(f"{size_class!r}: an empty slab is not one of its slabs")
    current = size_class.current
    if current is not None and (
        current not in size_class.slabs or current.used >= current.capacity
    ):
        raise CorruptionError(f"{size_class!r}: current slab {current!r} has no free slot")

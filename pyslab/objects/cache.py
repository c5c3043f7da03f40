"""Object caches: Bonwick's ``kmem_cache`` on pyslab memory. Objects keep their constructed state.

Bonwick's observation (USENIX 1994) was that initialising an object often costs more than
allocating its memory, and that a freed object is usually returned in a state that the next user
wants anyway: a zeroed buffer, an initialised lock, a header already filled in. An object cache
therefore runs the constructor once per object, when the memory for it is first set up, and
hands the same constructed objects out again and again; the destructor runs only when memory is
reclaimed. :class:`ObjectCache` creates one on an allocator::

    conns = pyslab.ObjectCache(alloc, Connection, init_connection, close_connection, "conn")
    c = conns.alloc()        # constructed: init_connection ran when its slab was built
    ...                      # use it, then put it back in its constructed state
    conns.free(c)            # no destructor: the object stays constructed for the next alloc
    conns.reap()             # slabs with no object in use: destructor on each object, memory back

Design
------
Cache slab
    One block of ``B`` bytes from the cache's allocator, ``B`` the smallest power of two that
    holds 16 objects, requested with alignment ``B``. It holds ``B // sizeof(ctype)`` objects
    back to back. With the default size classes objects up to 64 bytes get blocks of a size
    class (carved from the allocator's slabs); larger ones get large blocks.
Why its own slabs
    The allocator's size classes are shared by everyone and free a block the moment it is
    freed; the cache must control when memory is set up (to construct every object of it once)
    and when it goes (to destruct them), so it owns whole blocks and carves them itself.
Constructed state
    A cache slab is built by running ``ctor`` on each of its objects, in address order, before
    any of them is handed out. ``free`` writes nothing into the object: the free list lives
    beside the objects (a Python list of indices per slab), so an object comes back from
    ``alloc`` exactly as the last user left it. The contract, as in Bonwick's paper: free an
    object only in its constructed state.
Finding an object's slab
    Blocks are aligned to ``B``, so ``address & -B`` is the slab's base: one dict lookup, as
    obmalloc finds a pool by rounding down. Then the address must be an object start and that
    object must be in use, or the free raises (:class:`~pyslab.InvalidFreeError`,
    :class:`~pyslab.DoubleFreeError`, naming the address) and nothing changes.
Slab states
    ``empty`` (no object in use) -> ``partial`` -> ``full`` and back, as the allocator's slabs.
    Allocation prefers a partial slab to an empty one, so that empty slabs stay empty and can be
    reclaimed. Empty slabs are kept, constructed, until :meth:`ObjectCache.reap` (Bonwick's
    ``kmem_cache_reap``, run under memory pressure) or :meth:`ObjectCache.close`: the
    destructor then runs on every object of each, and the block goes back to the allocator.
Objects hold their memory
    Each object is a ctypes view of its slab's block that keeps the block alive
    (``from_buffer``): a stale reference to an object of a reclaimed slab keeps that memory
    mapped rather than dangling. The block is freed when the last such reference goes. The
    block is tied to its objects as a slab-backed buffer is
    (:meth:`pyslab.interop.SlabBuffers.adopt`), so the allocator's ``close()`` keeps it mapped
    too while an object lives; the cache then forgets its slabs (no destructor runs), and each
    block is unmapped when the last object over it goes.
Locking
    A cache shares its allocator's lock, so ``stats()`` of the allocator sees every cache in a
    consistent state and no lock order can deadlock. Constructors and destructors run outside
    the cache's critical sections (the lock is not held by the cache while they run): they may
    use the cache and the allocator.
Re-entrancy
    The critical sections allocate no Python object, so a garbage-collector finalizer cannot
    run inside one; a signal handler can. A ``free`` that finds the cache mid-update on the same
    thread is deferred until the interrupted call ends; an ``alloc`` builds a slab of its own,
    linked when the interrupted call ends.

Invariants (checked by :meth:`ObjectCache.validate`)
---------------------------------------------------
1. Every slab's base is aligned to ``B`` and maps to it in the base table.
2. A slab's ``used`` equals its number of in-use flags; its free list holds distinct indices
   without a flag, and ``len(free) + used == objects_per_slab``.
3. A slab is in ``empty`` exactly when ``used == 0``, in ``partial`` exactly when
   ``0 < used < objects_per_slab``.
4. The cache's ``live`` is the sum of its slabs' ``used``; ``peak >= live``.
5. ``current`` is None or a slab of the cache with a free object.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Generic, final

from pyslab.core import CacheStats, HeapClient, SlabAllocator
from pyslab.errors import (
    AllocatorClosedError,
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    PyslabError,
    PyslabWarning,
)

from .typed import CT, checked_ctype, own_block

__all__ = ["CacheRegistry", "ObjectCache", "caches"]

OBJECTS_PER_SLAB: Final[int] = 16
"""A cache slab is the smallest power of two of bytes holding at least this many objects."""


@final
class _CacheSlab(Generic[CT]):
    """One block of constructed objects.

    - ``base``: the block's address, aligned to the cache's slab size.
    - ``objects``: the objects, in address order; ``objects[i]`` is at ``base + i * size``.
    - ``free``: indices of free objects, a stack (the last freed is handed out first: its
      memory is the most likely to be in the CPU cache).
    - ``in_use``: ``in_use[i]`` is 1 exactly when object ``i`` is allocated.
    - ``used``: the number of allocated objects.
    """

    __slots__ = ("base", "free", "in_use", "objects", "used")

    def __init__(self, base: int, objects: list[CT]) -> None:
        self.base: Final = base
        self.objects = objects
        count = len(objects)
        self.free = list(range(count - 1, -1, -1))
        self.in_use = bytearray(count)
        self.used = 0

    def __repr__(self) -> str:
        return f"<cache slab at {self.base:#x}: {self.used}/{len(self.objects)} used>"


@final
class ObjectCache(Generic[CT]):
    """A cache of constructed objects of one ctypes type, in slabs of its own.

    The cache then appears under its name in the allocator's ``stats().caches``, and the
    allocator's ``shrink()`` and ``close()`` reap it (it is registered with the allocator's
    :class:`CacheRegistry` client).

    Args:
        allocator: where the cache's slabs come from.
        ctype: the type of every object.
        ctor: called once on each object when its slab is built, before any is handed out.
        dtor: called once on each object when its slab is reclaimed.
        name: the cache's name, unique among the allocator's caches. Default: the type's name,
            with ``-2``, ``-3``... appended when it is taken.

    Raises:
        TypeError: ``ctype`` is not a ctypes type, ``ctor``/``dtor`` not callable or ``name``
            not a string.
        ValueError: ``name`` is empty or taken, or ``ctype`` has size 0.
        AllocatorClosedError: the allocator was closed.

    Complexity: O(1); no memory is set up before the first :meth:`alloc`.
    """

    __slots__ = (
        "__weakref__", "_allocations", "_allocator", "_backlog", "_base_mask", "_busy",
        "_by_base", "_closed", "_constructed", "_ctor", "_ctype", "_current", "_deferred_frees",
        "_destroyed", "_dtor", "_empty", "_live", "_name", "_partial", "_peak", "_per_slab",
        "_size", "_slab_bytes", "_view_of", "deferred_errors",
    )

    def __init__(
        self,
        allocator: SlabAllocator,
        ctype: type[CT],
        ctor: Callable[[CT], object] | None = None,
        dtor: Callable[[CT], object] | None = None,
        name: str | None = None,
    ) -> None:
        size = checked_ctype(ctype, "cache")
        for role, hook in (("ctor", ctor), ("dtor", dtor)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{role} must be callable or None, not {hook!r}")
        slab_bytes = 1 << (size * OBJECTS_PER_SLAB - 1).bit_length()
        self._allocator: Final = allocator
        self._ctype: Final = ctype
        maker: Any = ctype  # typeshed types from_buffer on metaclasses _CData lacks
        self._view_of: Final[Callable[[ctypes.Array[ctypes.c_char], int], CT]] = maker.from_buffer
        self._ctor: Final = ctor
        self._dtor: Final = dtor
        self._size: Final = size
        self._slab_bytes: Final = slab_bytes
        self._per_slab: Final = slab_bytes // size
        assert self._per_slab >= OBJECTS_PER_SLAB > 1, "alloc() relies on it"
        self._base_mask: Final = -slab_bytes
        # Every slab, by base address (an ordered dict: oldest first).
        self._by_base: dict[int, _CacheSlab[CT]] = {}
        # Slabs with 0 < used < per_slab, and with used == 0; full slabs are in neither.
        self._partial: dict[_CacheSlab[CT], None] = {}
        self._empty: dict[_CacheSlab[CT], None] = {}
        # None, or a slab with a free object: alloc pops from it.
        self._current: _CacheSlab[CT] | None = None
        self._live = 0
        self._peak = 0
        self._allocations = 0
        self._constructed = 0
        self._destroyed = 0
        self._deferred_frees = 0
        self._closed = False
        # True while a call of this cache is mid-update (lock held); see "Re-entrancy".
        self._busy = False
        # Work of re-entrant calls, done when the interrupted call ends: an int is a deferred
        # free (an object's address), a slab is one built by a re-entrant alloc, to be linked.
        self._backlog: list[int | _CacheSlab[CT]] = []
        self.deferred_errors: list[PyslabError] = []
        """Errors of deferred frees, which had no caller left to raise to (also warned)."""
        self._name: Final = allocator.client(CacheRegistry).register(self, name)

    # --- allocation ---------------------------------------------------------------------------

    def alloc(self) -> CT:
        """Return an object in its constructed state.

        The constructor does not run here: it ran when the object's slab was built, and a
        freed object comes back as its last user left it. When no slab has a free object a new
        slab is built, running ``ctor`` on each of its objects (an exception from ``ctor`` runs
        ``dtor`` on the objects already constructed, frees the block and propagates).

        Raises:
            MemoryError: no memory for a new slab.
            AllocatorClosedError: the cache or its allocator was closed.
            Whatever ``ctor`` raises.

        Complexity: O(1) while a slab has a free object; otherwise one allocation and
        ``objects_per_slab`` constructor calls.
        """
        allocator = self._allocator
        while True:
            with allocator.lock:
                if self._busy:
                    return self._alloc_reentrant()
                if self._closed or allocator.closed:
                    self._check_open("alloc")
                slab = self._current or self._refill()
                if slab is not None:  # the fast path: pop from the current slab
                    self._busy = True
                    try:
                        index = slab.free.pop()
                        slab.in_use[index] = 1
                        used = slab.used + 1
                        slab.used = used
                        if used == 1:  # never also full: objects_per_slab >= 16
                            del self._empty[slab]
                            self._partial[slab] = None
                        elif used == self._per_slab:
                            del self._partial[slab]
                            self._current = None  # slab is current: refill set it if need be
                        live = self._live + 1
                        self._live = live
                        if live > self._peak:
                            self._peak = live
                        self._allocations += 1
                        return slab.objects[index]
                    finally:
                        self._busy = False
                        if self._backlog:
                            self._settle()
            self._grow()  # then take from it (or from whatever slab has room by then)

    def _grow(self) -> None:
        """Build a slab and link it. The cache's state is untouched while ctors run."""
        slab = self._build()
        allocator = self._allocator
        with allocator.lock:
            if self._closed or allocator.closed:
                self._destroy([slab])
                self._check_open("alloc")
            self._busy = True
            try:
                self._link(slab)
            finally:
                self._busy = False
                if self._backlog:
                    self._settle()

    def _refill(self) -> _CacheSlab[CT] | None:
        """Make a partial slab, else an empty one, current; None when there is neither."""
        for candidates in (self._partial, self._empty):
            for slab in candidates:
                self._current = slab
                return slab
        return None

    def _build(self) -> _CacheSlab[CT]:
        """A new slab, every object constructed, not yet linked. Lock not held by the cache."""
        allocator = self._allocator
        address = allocator.alloc(self._slab_bytes, self._slab_bytes)
        block = (ctypes.c_char * self._slab_bytes).from_address(address)
        # Freed when nothing refers to its memory any more; kept mapped by close() until then.
        own_block(allocator, block, address)
        view: Callable[[ctypes.Array[ctypes.c_char], int], CT] = self._view_of
        size = self._size
        objects = [view(block, i * size) for i in range(self._per_slab)]
        del block  # the objects hold it: the memory lives as long as one of them does
        ctor = self._ctor
        if ctor is not None:
            for done, obj in enumerate(objects):
                try:
                    ctor(obj)
                except BaseException:
                    self._run_dtor(objects[:done])
                    raise
        return _CacheSlab(address, objects)

    def _link(self, slab: _CacheSlab[CT]) -> None:
        """Enter a slab from :meth:`_build` (possibly with objects taken). Lock held, busy."""
        self._by_base[slab.base] = slab
        used = slab.used
        if used == 0:
            self._empty[slab] = None
        elif used < self._per_slab:
            self._partial[slab] = None
        if self._current is None and used < self._per_slab:
            self._current = slab
        self._constructed += self._per_slab
        self._live += used
        self._allocations += used
        self._peak = max(self._peak, self._live)

    def _alloc_reentrant(self) -> CT:
        # A signal handler interrupted a call of this cache on this thread: the lists may be
        # half-updated, so this allocation gets a slab of its own, linked when the call ends.
        slab = self._build()
        index = slab.free.pop()
        slab.in_use[index] = 1
        slab.used = 1
        self._backlog.append(slab)
        return slab.objects[index]

    # --- freeing ------------------------------------------------------------------------------

    def free(self, obj: CT) -> None:
        """Give ``obj`` back to the cache, in its constructed state; no destructor runs.

        Raises:
            TypeError: ``obj`` is not an instance of the cache's type.
            InvalidFreeError: ``obj`` is not an object of this cache (a copy, an object of
                another cache or of a reclaimed slab, an address inside an object).
            DoubleFreeError: ``obj`` is already free.
            AllocatorClosedError: the cache or its allocator was closed.
            In every case the cache is exactly as it was.

        Complexity: O(1).
        """
        if not isinstance(obj, self._ctype):
            raise TypeError(
                f"cache {self._name!r} holds {self._ctype.__name__} objects, not {obj!r}"
            )
        address = ctypes.addressof(obj)
        allocator = self._allocator
        with allocator.lock:
            if self._busy:
                self._backlog.append(address)
                self._deferred_frees += 1
                return
            if self._closed or allocator.closed:
                self._check_open("free")
            self._busy = True
            try:
                self._give_back(address)
            finally:
                self._busy = False
                if self._backlog:
                    self._settle()

    def _give_back(self, address: int) -> None:
        # Lock held, busy set. Every check comes before the first write.
        slab = self._by_base.get(address & self._base_mask)
        if slab is None:
            raise self._bad_object(address, None)
        index, offset = divmod(address - slab.base, self._size)
        if offset or index >= self._per_slab or not slab.in_use[index]:
            raise self._bad_object(address, slab)
        slab.in_use[index] = 0
        slab.free.append(index)
        used = slab.used
        slab.used = used - 1
        if used == self._per_slab:  # it was full
            if used > 1:
                self._partial[slab] = None
            if self._current is None:
                self._current = slab
        if used == 1:
            self._partial.pop(slab, None)
            self._empty[slab] = None
        self._live -= 1

    def _bad_object(self, address: int, slab: _CacheSlab[CT] | None) -> InvalidFreeError:
        """The error for an address that is not an allocated object's start (nothing changed)."""
        name = self._name
        if slab is None:
            return InvalidFreeError(f"{address:#x} is not an object of cache {name!r}", address)
        index, offset = divmod(address - slab.base, self._size)
        if index >= self._per_slab:
            return InvalidFreeError(
                f"{address:#x} lies in the tail of a slab of cache {name!r}, past its objects",
                address,
            )
        if offset:
            return InvalidFreeError(
                f"{address:#x} is inside the object at {address - offset:#x} of cache "
                f"{name!r} (offset {offset}), not at its start", address,
            )
        return DoubleFreeError(f"double free of {address:#x} in cache {name!r}", address)

    def _settle(self) -> None:
        """Complete what re-entrant calls left in the backlog. Lock held, busy clear."""
        errors: list[PyslabError] = []
        self._busy = True
        try:
            backlog = self._backlog
            while backlog:
                item = backlog.pop(0)
                if isinstance(item, int):
                    try:
                        self._give_back(item)
                    except PyslabError as error:
                        errors.append(error)
                else:
                    self._link(item)
        finally:
            self._busy = False
        for failure in errors:
            self.deferred_errors.append(failure)
            warnings.warn(f"deferred cache free failed: {failure}", PyslabWarning, stacklevel=3)

    # --- reclaiming ---------------------------------------------------------------------------

    def reap(self) -> int:
        """Reclaim every slab with no object in use: ``dtor`` on each object, memory back.

        Bonwick's ``kmem_cache_reap``: call it when memory matters more than the constructed
        objects. Returns the number of slabs reclaimed. If ``dtor`` raises, every object still
        gets its call, and the first exception is raised at the end.

        Raises:
            AllocatorClosedError: the cache or its allocator was closed.
            PyslabError: called from inside another call of this cache (a signal handler).
            Whatever ``dtor`` raises.

        Complexity: O(empty slabs x objects_per_slab) destructor calls.
        """
        with self._allocator.lock:
            self._check_open("reap")
            if self._busy:
                raise PyslabError(f"cache {self._name!r}: reap() inside another call of it")
            victims = list(self._empty)
            self._unlink(victims)
        self._destroy(victims)
        return len(victims)

    def _unlink(self, slabs: list[_CacheSlab[CT]]) -> None:
        """Take empty slabs out of the cache (their objects are destroyed next). Lock held."""
        self._busy = True
        try:
            for slab in slabs:
                del self._by_base[slab.base]
                del self._empty[slab]
                if self._current is slab:
                    self._current = None
                self._destroyed += self._per_slab
        finally:
            self._busy = False
            if self._backlog:
                self._settle()

    def _destroy(self, slabs: list[_CacheSlab[CT]]) -> None:
        """Run ``dtor`` on every object of slabs no longer linked; drop them (memory back)."""
        first_error: BaseException | None = None
        for slab in slabs:
            try:
                self._run_dtor(slab.objects)
            except BaseException as error:
                first_error = first_error or error
            slab.objects = []
        if first_error is not None:
            raise first_error

    def _run_dtor(self, objects: list[CT]) -> None:
        dtor = self._dtor
        # Closed: the cache forgot its slabs, and objects callers still hold are theirs.
        if dtor is None or self._allocator.closed:
            return
        first_error: BaseException | None = None
        for obj in objects:
            try:
                dtor(obj)
            except BaseException as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    # --- queries ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The cache's name in its allocator's statistics."""
        return self._name

    @property
    def ctype(self) -> type[CT]:
        """The type of every object."""
        return self._ctype

    @property
    def objects_per_slab(self) -> int:
        """Objects in each slab: each slab build runs ``ctor`` this many times."""
        return self._per_slab

    @property
    def slab_bytes(self) -> int:
        """Bytes per slab (a power of two; slabs are aligned to it)."""
        return self._slab_bytes

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def owns(self, obj: object) -> bool:
        """True when ``obj`` is an object of this cache that is allocated now.

        Complexity: O(1).
        """
        if not isinstance(obj, self._ctype):
            return False
        address = ctypes.addressof(obj)
        with self._allocator.lock:
            slab = None if self._closed else self._by_base.get(address & self._base_mask)
            if slab is None:
                return False
            index, offset = divmod(address - slab.base, self._size)
            return not offset and index < self._per_slab and bool(slab.in_use[index])

    def stats(self) -> CacheStats:
        """A consistent snapshot of the cache. Complexity: O(1)."""
        with self._allocator.lock:
            return CacheStats(
                name=self._name,
                type_name=self._ctype.__name__,
                object_size=self._size,
                objects_per_slab=self._per_slab,
                slabs=len(self._by_base),
                empty_slabs=len(self._empty),
                live_objects=self._live,
                peak_live=self._peak,
                allocations=self._allocations,
                constructed=self._constructed,
                destroyed=self._destroyed,
                slab_bytes=self._slab_bytes,
            )

    def validate(self) -> None:
        """Check the invariants of the module docstring; raise on the first one broken.

        Raises:
            CorruptionError: naming the slab and the invariant.

        Complexity: O(slabs x objects_per_slab).
        """
        with self._allocator.lock:
            live = 0
            for base, slab in self._by_base.items():
                if base != slab.base or base & (self._slab_bytes - 1):
                    raise CorruptionError(f"{slab!r}: misaligned or filed under {base:#x}")
                flagged = slab.in_use.count(1)
                free = slab.free
                if flagged != slab.used or len(free) + slab.used != self._per_slab:
                    raise CorruptionError(
                        f"{slab!r}: {flagged} in use, {len(free)} free, used={slab.used}"
                    )
                if len(set(free)) != len(free) or any(slab.in_use[i] for i in free):
                    raise CorruptionError(f"{slab!r}: free list repeats or holds a used object")
                if (slab in self._empty) != (slab.used == 0) or (slab in self._partial) != (
                    0 < slab.used < self._per_slab
                ):
                    raise CorruptionError(f"{slab!r}: the empty/partial sets disagree with used")
                live += slab.used
            if live != self._live or self._peak < live:
                raise CorruptionError(
                    f"cache {self._name!r}: live is {self._live} (peak {self._peak}) but its "
                    f"slabs hold {live} objects"
                )
            current = self._current
            if current is not None and (
                self._by_base.get(current.base) is not current or not current.free
            ):
                raise CorruptionError(f"cache {self._name!r}: current {current!r} has no room")

    # --- destruction --------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy the cache (``kmem_cache_destroy``): reclaim every slab and leave the registry.

        Every object must have been freed. Calling it twice is harmless. After the allocator
        was closed, destructors are skipped (the cache forgot its slabs then, and the objects
        callers still hold keep their memory mapped).

        Raises:
            PyslabError: objects are still allocated (the message says how many); nothing
                changes.
            Whatever ``dtor`` raises (the cache is closed all the same).

        Complexity: O(slabs x objects_per_slab) destructor calls.
        """
        with self._allocator.lock:
            if self._closed:
                return
            if self._busy:
                raise PyslabError(f"cache {self._name!r}: close() inside another call of it")
            if self._live:
                raise PyslabError(
                    f"cache {self._name!r} still has {self._live} objects allocated: free "
                    f"them before close()"
                )
            victims = list(self._by_base.values())
            self._unlink(victims)
            self._closed = True
            self._allocator.client(CacheRegistry).unregister(self)
        self._destroy(victims)

    def _forget_slabs(self) -> None:
        """Drop every slab, running no destructor: the allocator was closed. Lock held.

        The cache's books are emptied first, then the slabs' objects are dropped: the block
        of a slab whose objects nobody else holds is freed at once (by the collector's
        callback, to the closed allocator, which unmaps it); callers' objects keep theirs.
        Operations then raise :class:`~pyslab.AllocatorClosedError`; :meth:`close` still
        leaves the registry.
        """
        if self._busy:
            # close() from a signal handler that interrupted a call of this cache: that call
            # is mid-update on these very books. The slabs stay, mapped, until the cache goes.
            return
        victims = list(self._by_base.values())
        self._by_base = {}
        self._partial = {}
        self._empty = {}
        self._current = None
        self._live = 0
        for slab in victims:
            slab.objects = []

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise AllocatorClosedError(f"{operation}() on the closed cache {self._name!r}")
        if self._allocator.closed:
            raise AllocatorClosedError(
                f"{operation}() on cache {self._name!r}, whose allocator was closed"
            )

    def __enter__(self) -> ObjectCache[CT]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._live} live in {len(self._by_base)} slabs"
        return f"<ObjectCache {self._name!r} of {self._ctype.__name__}: {state}>"


@final
class CacheRegistry(HeapClient):
    """The object caches of one allocator, by name: reaped by its ``shrink()`` and ``close()``,
    listed in its ``stats().caches``. Get it with ``heap.client(CacheRegistry)``."""

    __slots__ = ("_by_name",)

    def __init__(self, heap: SlabAllocator) -> None:
        HeapClient.__init__(self, heap)
        self._by_name: dict[str, ObjectCache[Any]] = {}  # open caches, oldest first

    def register(self, cache: ObjectCache[Any], name: str | None) -> str:
        """Enter ``cache`` under ``name`` (default: its type's name, made unique with ``-2``,
        ``-3``...) and return the name.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: ``name`` is empty or already a cache of this allocator's.
            AllocatorClosedError: the allocator was closed.
        """
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a cache name is a str, not {name!r}")
        if name == "":
            raise ValueError("a cache name cannot be empty")
        with self.heap.lock:
            if self.heap.closed:
                raise AllocatorClosedError(f"cache() on a closed allocator {self.heap!r}")
            by_name = self._by_name
            if name is None:
                name = base = cache.ctype.__name__
                suffix = 1
                while name in by_name:
                    suffix += 1
                    name = f"{base}-{suffix}"
            elif name in by_name:
                raise ValueError(f"this allocator already has a cache named {name!r}")
            by_name[name] = cache
            return name

    def unregister(self, cache: ObjectCache[Any]) -> None:
        """Drop a closed cache (a no-op if it is not registered)."""
        with self.heap.lock:
            if self._by_name.get(cache.name) is cache:
                del self._by_name[cache.name]

    def caches(self) -> tuple[ObjectCache[Any], ...]:
        """Every open cache, oldest first. Complexity: O(caches)."""
        with self.heap.lock:
            return tuple(self._by_name.values())

    def give_back(self) -> None:
        """Reap every open cache: free slabs go back, their destructors run."""
        for cache in self.caches():
            if not cache.closed:
                cache.reap()

    def heap_closed(self) -> None:
        """The allocator closed: every open cache forgets its slabs, running no destructor.

        The blocks of objects callers still hold stay mapped (the allocator retained them)
        until those objects go; the others go back now.

        Complexity: O(slabs of every cache).
        """
        for cache in self.caches():
            cache._forget_slabs()

    def cache_stats(self) -> tuple[CacheStats, ...]:
        """Every open cache's statistics, oldest first."""
        return tuple(cache.stats() for cache in self._by_name.values())


def caches(heap: SlabAllocator) -> tuple[ObjectCache[Any], ...]:
    """Every open object cache of ``heap``, oldest first. Complexity: O(caches)."""
    return heap.client(CacheRegistry).caches()

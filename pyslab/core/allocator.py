"""The slab allocator: size-class routing, the hot path, the system fallback and whole-heap work.

Re-entrancy is the :mod:`~pyslab.core.guard`'s; the invariants are checked by
:mod:`~pyslab.core.invariants`. Features built on an allocator (buffers, C functions, object
caches) are :class:`~pyslab.core.clients.HeapClient` instances that it involves in ``shrink``,
``close`` and ``stats``; it imports none of them. ``close`` keeps the slabs and large blocks
that hold blocks live Python objects own (the clients' ``pinned_blocks``) mapped until those
blocks are freed: see "Retained blocks" in :mod:`~pyslab.core.clients`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MethodType, TracebackType
from typing import Final, TypeVar

from pyslab.errors import (
    AllocatorClosedError,
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    PolicyError,
    PyslabError,
)
from pyslab.policy import (
    BlockOperations,
    Policy,
    PolicySpec,
    ResolvedPolicy,
    parse_policies,
    resolve,
)

from . import forking as _forking
from . import libc as _libc
from . import source_claims
from ._large import SystemFallback
from ._layout import DEFAULT_SIZE_CLASSES, DEFAULT_SLAB_SIZE, build_tables, check_layout
from ._layout import slot_alignment as _slot_alignment
from .arguments import as_int as _as_int
from .clients import ClientT, HeapClient
from .guard import FRAME_FAILURE, NO_EXCEPTION_SET, CallGuard, Deferred, is_out_of_memory
from .invariants import check_class, check_slab, check_source, check_unsettled
from .memory import WORD_SHIFT, WORDS, copy, fill
from .pages import LargeObjects, MmapPageSource, PageSource
from .retained import RetainedMappings
from .slab import MemorySlab, SizeClass
from .stats import AllocatorStats, ClassStats

__all__ = ["SlabAllocator"]

WORD: Final[int] = _libc.POINTER_SIZE
_T = TypeVar("_T")
_MISALIGNED: Final[int] = WORD - 1
_OWNER_ATTRIBUTE: Final = "_pyslab_bound_to"

class SlabAllocator(CallGuard):
    """A slab allocator handing out real memory: addresses that C code can read and write.

    Args:
        size_classes: slot sizes, strictly ascending multiples of the pointer size, none larger
            than a slab. Default ``(8, 16, 32, 64, 128, 256, 512, 1024)``.
        slab_size: bytes per slab, a power-of-two multiple of the page size. Default 4096 (or
            the page size where pages are larger).
        policy: a :class:`~pyslab.Policy`, a registered name (``"dict-lookup"``), a
            composition ``"dict-lookup+reclaim"`` or a sequence of names and instances.
            Every composition starts from ``first-fit``. Default:
            ``"dict-lookup+reclaim+thread-cache(magazine=16)"``
            (:data:`pyslab.policy.DEFAULT_POLICY`): O(1) frees, empty slabs given back beyond
            four per class, per-thread magazines of 16 blocks per class in front.
            ``"first-fit"`` alone is the original design, O(slabs) per free.
        page_source: where slabs come from. Default: the policy's ``page_source`` decision if
            one provides it, else one ``mmap`` per slab. A source with ``large_objects()``
            also serves the blocks too large for any class.

    Raises:
        TypeError, ValueError: the layout is invalid (the message names the bad value).
        UnknownPolicyError: a policy name is not registered.
        PolicyError: the composition cannot be bound (see :func:`~pyslab.policy.resolve`: a
            policy class twice, a method named like a hook that is none, a hook with the
            wrong parameters), or a policy instance is bound to another open allocator.
        ValueError: ``page_source`` (or the one a policy supplied) already serves another
            allocator that is not closed, or that is closed but still retains blocks live
            Python objects own (see :meth:`close`), or is itself closed (``closed`` is True,
            as for an :class:`ArenaPageSource` whose allocator was closed): a source serves
            one allocator at a time, since closing an allocator closes its source. A source
            that keeps working after ``close()`` (``MmapPageSource``) may serve a new
            allocator once its previous one is closed and retains nothing.

    Complexity: O(size classes + policies); the page-source check is one dict lookup.

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
        resolved = _with_frames(lambda: resolve(parse_policies(policy)))
        if page_source is None and resolved.page_source is not None:
            page_source = resolved.page_source()  # a policy may supply the source
        self._source: Final = page_source if page_source is not None else MmapPageSource()
        # A source may serve large blocks itself (an arena: no libc after start).
        large_objects = getattr(self._source, "large_objects", None)
        service: LargeObjects | None = large_objects() if large_objects is not None else None
        self._large: Final[LargeObjects] = service if service is not None else SystemFallback()
        CallGuard.__init__(self)
        self._serial = 0  # slabs made so far: the next slab's serial number
        self._reentrant_allocs = 0
        self._retained = RetainedMappings(slab_size)  # empty until close(): see retained.py
        # Slab bases whose pages could not go back to the page source for want of memory (a
        # release makes a few Python ints): given back before the next slab is mapped, at
        # shrink() and at close(). Pre-sized, so that recording one allocates nothing.
        self._unreleased: Final[list[int]] = [0] * _UNRELEASED_SLOTS
        self._unreleased_count = 0
        self._clients: dict[type[HeapClient], HeapClient] = {}  # by class, oldest first
        source_claims.claim(self._source, self)
        lock = self._lock
        lock.acquire()  # policies are bound under the lock (the Policy contract)
        # Not try/finally, and no ``with``: see "Out of memory" in pyslab.core.guard.
        try:
            self._bind(resolved)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        lock.release()
        if failure is not None:
            source_claims.disclaim(self._source, self)
            raise failure
        _forking.track(self, _forking.ALLOCATORS)  # fork(): see pyslab.core.forking

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
    def retained_mappings(self) -> int:
        """How many slabs and large blocks ``close()`` kept mapped for live Python objects
        (0 while open, and once the last of them is gone)."""
        return len(self._retained)

    @property
    def slabs_made(self) -> int:
        """How many slabs this allocator has made (the next slab's serial number)."""
        return self._serial

    def class_for(self, size: int, align: int = WORD) -> SizeClass | None:
        """The size class that serves ``alloc(size, align)``, or None for the system fallback.

        Raises:
            TypeError, ValueError: as :meth:`alloc` for a bad size or alignment.

        Complexity: O(1).
        """
        return self._class_for(_checked_size(size, "size"), _checked_alignment(align))

    def take_blocks(self, size_class: SizeClass, count: int) -> list[int]:
        """Allocate up to ``count`` blocks of ``size_class`` under one lock (a magazine refill).

        Returns fewer when memory runs out once at least one block is taken: the blocks taken
        are the caller's, since giving them back would need memory too. Returns fewer,
        possibly none, when called re-entrantly (the heap may be half updated).

        Raises:
            MemoryError: not one block could be taken; nothing has changed.
            PolicyError: the policy's ``select_slab`` gave a slab that cannot serve; the blocks
                already taken are given back first.
            TypeError: ``count`` is not an int.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(count), plus what new slabs cost; O(count) memory made before the first
        block is taken.
        """
        self._check_closed("take_blocks")
        return self._exclusively(
            "take_blocks", lambda: self._take_blocks(size_class, count), reentrant=list
        )

    def _take_blocks(self, size_class: SizeClass, count: int) -> list[int]:
        # Lock held, busy set. Everything a shorter batch needs is made before the first take,
        # so that handing one out allocates nothing and calls nothing: lists of ``count``
        # slots, then of half as many, down to one (a list made with n slots loses up to half
        # of them without reallocating, so one of these holds a batch of any length), and the
        # successor of every index, as ints that already exist (beyond 256, ``n + 1`` would
        # be a new int).
        lists = [[0] * count]
        while len(lists[-1]) > 1:
            lists.append([0] * (len(lists[-1]) // 2))
        lengths = [len(made) for made in lists]
        following = list(range(1, count + 1))
        taken, size, n = lists[0], size_class.slot_size, 0
        try:
            while n < count:
                taken[n] = self._take(size_class, size)  # a store: the block is never in flight
                n = following[n]
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is None:
            return taken
        if not n:
            raise failure  # nothing was taken
        if not isinstance(failure, (MemoryError, SystemError)):
            # A refused answer or a signal handler's error, memory to spare: the batch goes back.
            index = 0
            while index < n:
                self._free_locked(taken[index])
                index = following[index]
            raise failure
        # Out of memory (or of frames): the n blocks go to the caller in the shortest list made
        # above that holds them, cut to n by pops, which neither allocate nor reallocate.
        level, last = 0, len(lengths) - 1
        while level < last and lengths[level + 1] >= n:
            level += 1
        batch = lists[level]
        index = 0
        while level and index < n:
            batch[index] = taken[index]
            index = following[index]
        index = n
        while index < lengths[level]:
            batch.pop()
            index = following[index]
        return batch

    def return_blocks(self, addresses: Sequence[int]) -> None:
        """Free every block of ``addresses`` under one lock (a magazine flush).

        Called re-entrantly, the frees are deferred like any re-entrant free, all or nothing.

        Raises:
            InvalidFreeError: an address is not a live block; the ones before it are freed.
            MemoryError: memory ran out at a block: the ones before it are freed, it and the
                ones after it are live and intact (each free is all or nothing, and undoing
                the frees done would need memory). Deferred: nothing is deferred.

        Complexity: O(len(addresses)) with an O(1) owner lookup.
        """
        def free_each() -> None:
            for address in addresses:
                self._free_locked(address)

        self._exclusively(
            "return_blocks", free_each, reentrant=lambda: self._defer_frees(addresses)
        )

    # --- allocation -------------------------------------------------------------------------

    def alloc(self, size: int, align: int = WORD) -> int:
        """Allocate ``size`` bytes aligned to ``align`` and return the block's address.

        The smallest class whose slots fit ``size`` and are aligned to ``align`` serves the
        request; a larger request, or an alignment no class gives, goes to libc.

        Raises:
            TypeError: ``size`` or ``align`` is not an int.
            ValueError: ``size`` is not positive or ``align`` is not a power of two.
            MemoryError: no memory is left; the allocator is unchanged.
            PolicyError: the policy's ``select_slab`` answered a slab that cannot serve the
                request (full, of another class, not listed); the allocator is unchanged.
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
                        return self._alloc_busy(size, align)  # releases the lock
                    self._busy = True
                    # Not try/finally: see "Out of memory" in pyslab.core.guard.
                    try:
                        address = self._take(size_class, size)
                    except BaseException as error:
                        failure: BaseException | None = error
                    else:
                        failure = None
                    self._busy = False
                    if self._backlog:
                        self._settle_and_release()
                    else:
                        lock.release()
                    if failure is not None:
                        # Inline, not a call: a call could itself fail for want of a frame.
                        if type(failure) is SystemError and NO_EXCEPTION_SET in str(failure):
                            raise MemoryError(FRAME_FAILURE) from failure
                        raise failure
                    return address
        return self._alloc_unusual(size, align)

    def _alloc_busy(self, size: int, align: int) -> int:
        """``alloc`` found the heap busy (lock held): a re-entrant call. Releases the lock.

        Raises:
            MemoryError: libc has no block, or there is no memory to record one (or a frame
                for the call); nothing is left allocated.
        """
        # Not try/finally: see "Out of memory" in pyslab.core.guard.
        try:
            address = self._alloc_reentrant(size, align)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        self._lock.release()
        if failure is not None:
            if type(failure) is SystemError and NO_EXCEPTION_SET in str(failure):
                raise MemoryError(FRAME_FAILURE) from failure
            raise failure
        return address

    def _take_plain(self, size_class: SizeClass, size: int) -> int:
        # Lock held, busy set. Invariant: current is None or has a free slot.
        # Compute, then commit: every new value (each a fresh int, which may fail to allocate)
        # is computed before the first write, and the writes are attribute stores and a dict
        # deletion, which allocate nothing and call nothing. An exception before them, out of
        # memory or a signal handler's, leaves the heap as it was; nothing can fail after.
        slab = size_class.current or self._refill(size_class)
        address = slab.free
        if address:
            after = WORDS[address >> WORD_SHIFT]
            bump = slab.bump
        else:
            address = slab.bump
            after = 0
            bump = address + slab.slot_size
        live = slab.live | 1 << ((address - slab.base) >> WORD_SHIFT)
        used = slab.used + 1
        full = size_class.full + 1 if used == slab.capacity else 0
        class_live = size_class.live + 1
        # --- commit ---
        slab.free = after
        slab.bump = bump
        slab.live = live
        slab.used = used
        if used == 1:
            del size_class.empty[slab]
        if full:
            size_class.current = None
            size_class.full = full
        size_class.live = class_live
        if class_live > size_class.peak:
            size_class.peak = class_live
        return address

    def _take_observed(self, size_class: SizeClass, size: int) -> int:
        # The take of a configuration with observers: ``_take_then`` with no second step,
        # which tells the policy (``block_allocated``) between the core's stores and the slab's
        # leaving ``empty``, and stores back saved values when the policy raises. The plain
        # path stays one function, without this bookkeeping: it is the hot path.
        return self._take_then(size_class, size, _no_op)

    def _take_then(self, size_class: SizeClass, size: int, then: Callable[[int], object]) -> int:
        """Take a block for a call with a second step, ``then(address)`` (zeroing it, or
        copying into it and freeing the old block), and tell the policy (``block_allocated``).
        Lock held, busy set.

        Undone without memory, so that a failure of the second step leaves the heap as it was
        even with memory exhausted: the core's stores are made but for the slab's leaving
        ``empty``; if ``then`` or the policy raises, the saved values are stored back (stores
        allocate nothing) and so is the slot's first word, the free-list link ``then`` may
        have overwritten. ``then`` itself changes nothing when it raises. When every policy
        that observes ``block_allocated`` can revert it (the composed
        ``revert_block_allocated``), the policy is told before ``then``, whose failure is
        then undone by that revert, which allocates nothing; so ``then`` may free the old
        block of a move, a step nothing can undo, last. Otherwise (or with no observer) the
        policy is told after ``then``, which must then be undoable by the core alone (zeroing).
        Should the revert itself fail (a call that cannot get a frame), the block stays taken,
        as the policy knows it, and the error is raised.

        Raises:
            Whatever the selection, ``then`` or the policy raised; the heap is as it was
            (but for the block kept when the revert failed, see above).

        Complexity: as the plain take, plus ``then``.
        """
        slab = size_class.current or self._refill(size_class)
        saved = (slab.free, slab.bump, slab.live, slab.used, size_class.current,
                 size_class.full, size_class.live, size_class.peak)
        address = slab.free
        if address:
            after = WORDS[address >> WORD_SHIFT]
            bump = slab.bump
        else:
            address = slab.bump
            after = 0
            bump = address + slab.slot_size
        word = address >> WORD_SHIFT
        live = slab.live | 1 << ((address - slab.base) >> WORD_SHIFT)
        used = slab.used + 1
        full = size_class.full + 1 if used == slab.capacity else 0
        class_live = size_class.live + 1
        revert = self._policy.revert_block_allocated  # None: told after ``then``, see above
        told = False
        # --- commit, but for ``empty`` ---
        slab.free = after
        slab.bump = bump
        slab.live = live
        slab.used = used
        if full:
            size_class.current = None
            size_class.full = full
        size_class.live = class_live
        if class_live > size_class.peak:
            size_class.peak = class_live
        try:
            if revert is None:  # no observer, or one that cannot undo: told once ``then`` ran
                then(address)
                self._block_allocated(slab, address, size)
            else:  # told first: a failure of ``then`` is undone by the revert, below
                self._block_allocated(slab, address, size)
                told = True
                then(address)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        kept = False  # the block stays taken, as the policy knows it: its revert failed
        if failure is not None and told:
            try:
                revert(slab, address, size)  # type: ignore[misc]
            except BaseException:  # see "Out of memory" in pyslab.core.guard
                kept = True
        if failure is not None and not kept:
            (slab.free, slab.bump, slab.live, slab.used, size_class.current,
             size_class.full, size_class.live, size_class.peak) = saved
            WORDS[word] = after
            raise failure
        if used == 1:
            del size_class.empty[slab]
        if failure is not None:
            raise failure
        return address

    def _refill(self, size_class: SizeClass) -> MemorySlab:
        """Make the policy's ``select_slab`` answer (or a new slab) ``current``. Lock held.

        Runs only when ``size_class.current`` is None (never on the fast path).

        Raises:
            PolicyError: the answer is neither None nor a slab listed in ``size_class`` with a
                free slot; nothing has changed.
            MemoryError: no slab can be mapped; nothing has changed.

        Complexity: the policy's ``select_slab``, then O(1) (or one ``mmap``).
        """
        slab = self._select_slab(size_class)
        if slab is None:
            slab = self._new_slab(size_class)
        elif (
            not isinstance(slab, MemorySlab)
            or slab.size_class is not size_class
            or slab not in size_class.slabs
            or slab.used >= slab.capacity
        ):
            raise self._bad_selection(size_class, slab)
        size_class.current = slab
        return slab

    def _bad_selection(self, size_class: SizeClass, answer: object) -> PolicyError:
        """The error for a ``select_slab`` answer that cannot serve ``size_class``."""
        if not isinstance(answer, MemorySlab):
            why = "not a MemorySlab (None asks for a new slab)"
        elif answer.size_class is not size_class:
            why = f"a slab of the {answer.slot_size}-byte class"
        elif answer not in size_class.slabs:
            why = "not one of the class's slabs (released, or never listed)"
        else:
            why = f"full ({answer.used}/{answer.capacity} slots used)"
        return PolicyError(
            f"policy {self._policy.name!r}: select_slab answered {answer!r} for the "
            f"{size_class.slot_size}-byte class, which is {why}; it must answer None or a "
            f"slab of that class with a free slot"
        )

    def _new_slab(self, size_class: SizeClass) -> MemorySlab:
        if self._unreleased_count:
            self._give_unreleased_back()  # first: raises, having changed nothing, if it fails
        serial = self._serial
        following = serial + 1
        color = self._color(size_class, serial)
        base = self._source.map_slab(self._slab_size)
        try:
            slab = MemorySlab(size_class, base, color, self._slab_size, serial)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None:
            self._give_pages_back(base)
            raise failure
        self._list_slab(size_class, slab)  # gives the pages back itself when it fails
        self._serial = following
        return slab

    def _list_slab(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """List a new slab in its class, then tell each policy that listens, in composition
        order; on failure, undo that and give the slab's pages back to the page source.

        Each step may fail (a dict may need to grow, a policy hook may run out of memory, a
        signal handler may raise at a hook's call), and every failure is undone, so that no
        side lists a slab another does not: the policies already told are told, last first,
        that the slab goes back to the page source (``slab_removed``, which undoes
        ``slab_added`` exactly), and the listing is undone by deletions, which allocate
        nothing. The core tells the policies one by one, rather than through the composed
        ``slab_added``, to know which of them to tell. The index policies' ``slab_removed``
        (``dict-lookup``, ``address-mask``) allocates nothing, so the undo holds with memory
        exhausted; a policy without a ``slab_removed`` is not told (``stats`` then counts the
        slab as created and reclaimed, which it was; ``fullest-first`` files no empty slab).
        Should a ``slab_removed`` itself fail, the pages stay mapped (a policy may still
        know the slab) and that failure is raised.

        Raises:
            Whatever the listing or a policy's ``slab_added`` raised: the slab is listed
            nowhere and its pages are back with the source (or, if that failed too, still
            mapped and counted by the source).

        Complexity: O(policies), plus their hooks.
        """
        policies = self._policy.policies if self._slab_added is not None else ()
        slabs = size_class.slabs
        try:
            slabs[slab] = None  # the first write, which may fail: nothing else has changed yet
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            unlisted: BaseException | None = error
        else:
            unlisted = None
        if unlisted is not None:
            self._give_pages_back(slab.base)
            raise unlisted
        told = 0  # the policies passed, told or not listening
        try:
            size_class.empty[slab] = None
            for policy in policies:
                if type(policy).slab_added is not Policy.slab_added:
                    policy.slab_added(size_class, slab)
                told += 1
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is None:
            return
        try:
            while told:
                told -= 1
                policy = policies[told]
                if (
                    type(policy).slab_added is not Policy.slab_added
                    and type(policy).slab_removed is not Policy.slab_removed
                ):
                    policy.slab_removed(size_class, slab)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            undone: BaseException | None = error
        else:
            undone = None
        size_class.empty.pop(slab, None)
        del slabs[slab]
        if undone is not None:
            raise undone from failure
        self._give_pages_back(slab.base)
        raise failure

    def _give_pages_back(self, base: int) -> None:
        """Give a slab's pages back to the page source; if that fails for want of memory,
        record the base to be given back later (:meth:`_give_unreleased_back`), so that no
        mapping is lost. Slab lock held.

        Raises:
            What the release raised but out of memory, or out of memory once every slot
            for unreleased slabs is taken (then the pages stay mapped, counted by the source).

        Complexity: one ``munmap`` (or an arena's extent update).
        """
        try:
            self._source.release_slab(base, self._slab_size)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is None:
            return
        count = self._unreleased_count
        # No message read (that allocates): a SystemError here is a frame that could not be
        # made, and the release has then not run.
        if isinstance(failure, (MemoryError, SystemError)) and count < _UNRELEASED_SLOTS:
            self._unreleased[count] = base
            self._unreleased_count = count + 1  # a small int: cached, allocates nothing
            return
        raise failure

    def _give_unreleased_back(self) -> None:
        """Give back the pages of the slabs :meth:`_give_pages_back` could not, last first.

        Raises:
            MemoryError (or what the release raised): the slabs not yet given back stay
                recorded.

        Complexity: one ``munmap`` per recorded slab (at most ``_UNRELEASED_SLOTS``).
        """
        while self._unreleased_count:
            count = self._unreleased_count - 1
            self._source.release_slab(self._unreleased[count], self._slab_size)
            self._unreleased_count = count

    def _color(self, size_class: SizeClass, serial: int) -> int:
        """The policy's ``slab_color`` for the next slab, checked.

        Raises:
            PolicyError: the offset is not a multiple of the class's alignment leaving room
                for one slot.
        """
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
        return color

    def _alloc_reentrant(self, size: int, align: int) -> int:
        # A finalizer or signal handler interrupted an allocator call on this thread: the slab
        # state may be half-updated, so libc serves the block and the outer call records it.
        # All or nothing: the count is made before the block, and the item and its append (the
        # writes that may allocate) come before the count's store; when they fail, the block
        # goes back to libc (or, if even that needs memory, stays with libc, unknown to the
        # heap: the heap is as it was either way).
        count = self._reentrant_allocs + 1
        address = _libc.system_malloc(size, align)
        try:
            self._backlog.append((address, size))
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is None:
            self._reentrant_allocs = count
            return address
        with contextlib.suppress(MemoryError):  # else it stays with libc, uncounted by the heap
            _libc.system_free(address)
        raise failure

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

    def _complete(self, item: Deferred) -> None:
        # A block libc served a re-entrant alloc is recorded; a re-entrant free carried out.
        if isinstance(item, tuple):
            if not self._closed:
                self._large.record(*item)
            # else: libc served a finalizer's alloc while close() ran; a closed allocator
            # tracks nothing but its retained mappings, so the block stays the caller's alone.
        elif self._closed and not self._retained.pinned(item):
            # Deferred while close() ran, for a block no client pinned: it went back with
            # every other block, which is what the free asked for.
            return
        else:
            self._free_locked(item)

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
        align = _checked_alignment(align)
        total = count * size
        if total > sys.maxsize:
            raise MemoryError(f"calloc({count}, {size}) asks for more than the address space")
        size_class = None if self._policy.frontends else self._class_for(total, align)
        if size_class is None:  # a large block, or a front end that serves blocks its own way
            return self._by_steps(total, align, lambda new: fill(new, 0, total))
        return self._exclusively(
            "calloc",
            lambda: self._take_then(size_class, total, lambda new: fill(new, 0, total)),
            reentrant=lambda: self._by_steps(total, align, lambda new: fill(new, 0, total)),
        )

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
        if ptr is None:
            return self.alloc(size, align)
        ptr = _as_int(ptr, "realloc() takes an address (int) or None;")
        if ptr == 0:
            return self.alloc(size, align)
        size, align = _checked_size(size, "size"), _checked_alignment(align)
        lock = self._lock
        lock.acquire()  # held across the three steps: no other thread sees the block twice
        # Not try/finally: see "Out of memory" in pyslab.core.guard.
        try:
            new = self._move(ptr, size, align)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        lock.release()
        if failure is not None:
            # Inline, not a call: a call could itself fail for want of a frame.
            if type(failure) is SystemError and NO_EXCEPTION_SET in str(failure):
                raise MemoryError(FRAME_FAILURE) from failure
            raise failure
        return new

    def _move(self, ptr: int, size: int, align: int) -> int:
        """``realloc`` under the lock: in place when the class is the same; else a new block,
        the contents copied, the old block freed, each undone if a later one fails (the old
        block then stays live, untouched).

        Within the core (no front end, a slab block to a slab block) the new block is taken
        by :meth:`_take_then`, whose undo needs no memory, when no policy observes
        ``block_allocated`` or every one that does can revert it; otherwise through the
        public operations (:meth:`_by_steps`)."""
        count = min(self.usable_size(ptr), size)
        policy = self._policy
        size_class = None if policy.frontends else self._class_for(size, align)
        if size_class is not None:  # no front end: the core lays out every block
            slab = self._find_owner(ptr)
            if slab is not None and size_class is slab.size_class:
                return ptr
            if policy.block_allocated is None or policy.revert_block_allocated is not None:
                return self._exclusively(
                    "realloc",
                    lambda: self._take_then(
                        size_class, size, lambda new: self._copy_and_free(new, ptr, count)
                    ),
                    reentrant=lambda: self._by_steps(
                        size, align, lambda new: self._copy_then_free(new, ptr, count)
                    ),
                )
        return self._by_steps(size, align, lambda new: self._copy_then_free(new, ptr, count))

    def _copy_and_free(self, new: int, ptr: int, count: int) -> None:
        """The second step of a move within the core: lock held, busy set."""
        copy(new, ptr, count)
        self._free_locked(ptr)

    def _copy_then_free(self, new: int, ptr: int, count: int) -> None:
        """The second step of a move through the public operations (front ends, observers,
        large blocks): lock held, not busy."""
        copy(new, ptr, count)
        self.free(ptr)

    def _by_steps(self, size: int, align: int, then: Callable[[int], object]) -> int:
        """Allocate through the public ``alloc``, then run ``then(new)``; if it raises, free
        the new block and raise. A large block goes straight back to the large-object service,
        whose release succeeds with memory exhausted (the block awaits release); a slab block
        is freed through the public ``free``, which may itself need memory: under persistent
        exhaustion, a front end's block, or one a policy observes without the revert hooks
        (the core's own moves go through :meth:`_take_then` otherwise), can then stay
        allocated."""
        new = self.alloc(size, align)
        try:
            then(new)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure = error
        else:
            return new
        if not self._policy.frontends and self._large.holds(new):
            self._large.release(new)
        else:
            self.free(new)
        raise failure

    # --- freeing ----------------------------------------------------------------------------

    def free(self, ptr: int | None) -> None:
        """Give the block at ``ptr`` back. ``free(0)`` and ``free(None)`` do nothing, as in C.

        Raises:
            InvalidFreeError: ``ptr`` is not the start of a block of this allocator (foreign,
                inside a slot, or a slot never handed out).
            DoubleFreeError: the block is already free.
            TypeError: ``ptr`` is not an int or None.
            AllocatorClosedError: the allocator was closed, and ``ptr`` is not a block a
                client pinned at :meth:`close` (freeing one of those after ``close()`` hands
                it back, unmapping its slab or large block when it was the last in it).
            In every case the allocator is exactly as it was.

        Complexity: the policy's ``find_owner`` (O(1) with ``dict-lookup``, O(slabs) with
        ``first-fit``), then O(1); releasing an empty slab costs one ``munmap``. After
        ``close()``: O(1), plus one ``munmap`` for the last block of a retained mapping.
        """
        if type(ptr) is not int or ptr <= 0 or ptr & _MISALIGNED:
            self._free_unusual(ptr)
            return
        lock = self._lock
        lock.acquire()
        if self._busy:  # re-entrant: deferred, all or nothing; the lock goes whatever happens
            try:
                self._defer_free(ptr)
            except BaseException as error:  # see "Out of memory" in pyslab.core.guard
                refused: BaseException | None = error
            else:
                refused = None
            lock.release()
            if refused is not None:  # nothing deferred: the block is live, as it was
                if type(refused) is SystemError and NO_EXCEPTION_SET in str(refused):
                    raise MemoryError(FRAME_FAILURE) from refused
                raise refused
            return
        self._busy = True
        # Not try/finally: see "Out of memory" in pyslab.core.guard.
        try:
            slab = self._find_owner(ptr)
            if slab is None:
                self._free_large(ptr)
            else:
                self._give_back(slab, ptr)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        self._busy = False
        if self._backlog:
            self._settle_and_release()
        else:
            lock.release()
        if failure is not None:
            # Inline, not a call: a call could itself fail for want of a frame.
            if type(failure) is SystemError and NO_EXCEPTION_SET in str(failure):
                raise MemoryError(FRAME_FAILURE) from failure
            raise failure

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
        # Lock held, busy set. Check, compute, then commit, as _take_plain: every check and
        # every new value comes before the first write, so that a rejected address, or a
        # value that cannot be allocated, leaves the slab exactly as it was. The one write
        # that may allocate, a slab joining ``empty`` (the dict may grow), comes first: until
        # the stores below, a slab listed as empty with a live block is seen by nobody.
        bit = 1 << ((ptr - slab.base) >> WORD_SHIFT)
        live = slab.live
        if not live & bit:
            raise self._bad_address(ptr, slab)
        live ^= bit
        word = ptr >> WORD_SHIFT
        used = slab.used
        remaining = used - 1
        size_class = slab.size_class
        class_live = size_class.live - 1
        was_full = used == slab.capacity
        full = size_class.full - 1 if was_full else 0
        if used == 1:
            size_class.empty[slab] = None
        # --- commit: no call, no allocation, from the first store to the last ---
        slab.live = live
        WORDS[word] = slab.free
        slab.free = ptr
        slab.used = remaining
        size_class.live = class_live
        if was_full:
            size_class.full = full
            if size_class.current is None:
                size_class.current = slab
        # The block is free and the core consistent; the policy is told only now.
        if was_full and self._slab_refilled is not None:
            self._tell_refilled(size_class, slab)
        if used == 1:
            self._offer_empty(size_class, slab)

    def _tell_refilled(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Tell the policy a full slab got a free slot. Advice the free does not depend on
        (the core has made the slab ``current`` if the class had none): if memory runs out
        while telling it, the free has still happened, which is what the caller must hear.
        The policy's hook must then have changed nothing (``first-fit``'s and
        ``fullest-first``'s make one attribute store, after which nothing can fail).

        Raises:
            Whatever the hook raised but out of memory (a signal handler's exception).
        """
        try:
            self._slab_refilled(size_class, slab)  # type: ignore[misc]
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None:
            _raise_unless_out_of_memory(failure)

    def _offer_empty(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Ask the policy whether the slab that just became empty stays cached; release it
        if not. The free that emptied it has happened: if memory runs out while asking or
        releasing, the slab stays cached (a valid state, in ``empty``), and the next free that
        empties a slab, ``shrink()`` or ``close()`` gives it back. (Or, when only giving the
        pages back failed, the slab has left the heap and its pages await their release: see
        :meth:`_give_pages_back`.)

        Raises:
            Whatever the policy raised but out of memory (a signal handler's exception).
        """
        try:
            keep = self._keep_empty(size_class, slab)
            if not keep:
                self._release_slab(size_class, slab)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None:
            _raise_unless_out_of_memory(failure)

    def _give_back_observed(self, slab: MemorySlab, ptr: int) -> None:
        # The plain give-back written out again, with the observers told between its stores
        # and the advice: when an observer raises, the stores are undone with the values
        # saved here (stores allocate nothing), the block's first word included (the
        # free-list link overwrote it), and a slab that joined ``empty`` leaves it (a
        # deletion), so that the free either happens or raises with the block live and
        # intact. ``slab_refilled`` and ``keep_empty`` are asked only once the free stands,
        # after ``block_freed``: a slab is released only after its observers saw it empty.
        # The plain path stays one function, without this bookkeeping: it is the hot path.
        bit = 1 << ((ptr - slab.base) >> WORD_SHIFT)
        live = slab.live
        if not live & bit:
            raise self._bad_address(ptr, slab)
        freed = live ^ bit
        word = ptr >> WORD_SHIFT
        contents = WORDS[word]
        used = slab.used
        remaining = used - 1
        size_class = slab.size_class
        saved = (slab.free, size_class.live, size_class.full, size_class.current)
        class_live = size_class.live - 1
        was_full = used == slab.capacity
        full = size_class.full - 1 if was_full else 0
        emptied = used == 1
        if emptied:
            size_class.empty[slab] = None  # the one write that may allocate: first
        # --- commit ---
        slab.live = freed
        WORDS[word] = slab.free
        slab.free = ptr
        slab.used = remaining
        size_class.live = class_live
        if was_full:
            size_class.full = full
            if size_class.current is None:
                size_class.current = slab
        try:
            self._block_freed(slab, ptr)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None:
            slab.live = live
            slab.used = used
            (slab.free, size_class.live, size_class.full, size_class.current) = saved
            WORDS[word] = contents
            if emptied:
                del size_class.empty[slab]
            raise failure
        if was_full and self._slab_refilled is not None:
            self._tell_refilled(size_class, slab)
        if emptied:
            self._offer_empty(size_class, slab)

    def _release_slab(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Give an empty slab back to the page source. Lock held.

        The policies are told first, one by one, last first (the converse of
        :meth:`_list_slab`, and the index policies, which allocate nothing, usually come
        first in a composition, so last here). When one raises, those already told are told
        ``slab_added`` again, in composition order, and nothing else has changed (each hook
        of this package is all or nothing). The core's own writes are deletions and a
        store, which allocate nothing. Giving the pages back comes last and may fail (no
        memory to pass the arguments to ``munmap``, or for the arena's extent list): the
        slab has then left the heap and every policy, and its pages await their release
        (:meth:`_give_pages_back`).

        Raises:
            Whatever a ``slab_removed`` hook or the page source raised (see above); or what a
            ``slab_added`` telling a policy of the slab again raised, chained to the first
            error: that policy has then forgotten a slab the heap keeps (re-entering a slab
            in a dict needs memory only when the dict must grow).

        Complexity: the hooks', plus one ``munmap`` (or an arena's extent update).
        """
        if self._slab_removed is not None:
            policies = self._policy.policies
            told = len(policies)  # policies[told:] were told
            try:
                while told:
                    told -= 1
                    if type(policies[told]).slab_removed is not Policy.slab_removed:
                        policies[told].slab_removed(size_class, slab)
            except BaseException as error:  # see "Out of memory" in pyslab.core.guard
                failure: BaseException | None = error
            else:
                failure = None
            if failure is not None:
                told += 1  # the one that raised changed nothing
                try:
                    while told < len(policies):
                        policy = policies[told]
                        if (
                            type(policy).slab_removed is not Policy.slab_removed
                            and type(policy).slab_added is not Policy.slab_added
                        ):
                            policy.slab_added(size_class, slab)
                        told += 1
                except BaseException as error:
                    undone: BaseException | None = error
                else:
                    undone = None
                if undone is not None:
                    raise undone from failure
                raise failure
        del size_class.slabs[slab]
        del size_class.empty[slab]
        if size_class.current is slab:
            size_class.current = None
        self._give_pages_back(slab.base)

    def _free_large(self, ptr: int) -> None:
        if not self._large.holds(ptr):
            raise self._bad_address(ptr, None)
        self._large.release(ptr)

    def _free_unusual(self, ptr: object) -> None:
        if ptr is None or (type(ptr) is int and ptr == 0):
            return
        if type(ptr) is not int:
            address = _as_int(ptr, "free() takes an address (int) or None;")
            self.free(address)  # an int subclass or a numpy integer: the int it stands for
            return
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

    # --- queries ------------------------------------------------------------------------------

    def owns(self, ptr: int) -> bool:
        """True when ``ptr`` is the start of a live block of this allocator.

        Complexity: as the owner lookup of :meth:`free`.
        """
        if type(ptr) is not int:
            if isinstance(ptr, bool) or not hasattr(ptr, "__index__"):
                return False
            ptr = _as_int(ptr, "owns()")
        if ptr <= 0 or self._closed:
            return False
        with self._lock:
            slab = self._find_owner(ptr)
            return self._large.holds(ptr) if slab is None else slab.is_live(ptr)

    def usable_size(self, ptr: int) -> int:
        """Bytes usable at ``ptr``: the slot size, or the requested size of a large block.

        Raises:
            TypeError: ``ptr`` is not an int (an object with ``__index__`` counts, a bool not).
            InvalidFreeError, DoubleFreeError: ``ptr`` is not a live block.
        """
        ptr = _as_int(ptr, "usable_size() takes an address (int);")
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
            # After close(), the retained slabs are listed in no class but are still mapped.
            mapped_bytes=self._slab_size * (
                sum(c.slabs for c in classes) + self._retained.slabs(self._large.sizes)
            ),
            large_blocks=len(self._large.sizes),
            large_bytes=self._large.total,
            reentrant_allocs=self._reentrant_allocs,
            deferred_frees=self._deferred_frees,
            caches=tuple(s for client in self._clients.values() for s in client.cache_stats()),
        )

    def inspect(
        self, operation: str, reader: Callable[[], _T], *, consistent: bool = True
    ) -> _T:
        """Run ``reader`` with the heap held still and return its answer (for observers).

        The reader runs under the lock with the heap marked busy, so it sees every slab, free
        list and count consistent, even while other threads allocate; a finalizer that calls
        this allocator meanwhile is deferred or served by libc, never let into the heap. The
        reader reads; it must not allocate from or free to this allocator. ``operation``
        names the caller in errors. From inside another call of this allocator (a policy
        hook, a finalizer) the heap may be half updated: a ``consistent`` read is refused
        there, any other reads the heap as it is (counts may be off by one).

        Raises:
            AllocatorClosedError: the allocator was closed.
            PyslabError: a ``consistent`` read from inside another call of this allocator.

        Complexity: the reader's.
        """
        self._check_closed(operation)
        return self._read(operation, reader, consistent=consistent)

    def slabs(self) -> list[MemorySlab]:
        """Every slab, class by class, oldest first (a copy: safe to keep)."""
        return self._read("slabs", lambda: [slab for c in self._classes for slab in c.slabs])

    # --- clients: features built on the allocator -------------------------------------------

    def client(self, kind: type[ClientT]) -> ClientT:
        """This allocator's one instance of the client class ``kind``, built on first use.

        A client is a feature built on an allocator that the allocator must involve in its
        whole-heap operations (see :class:`~pyslab.core.HeapClient`): ``shrink()`` and
        ``close()`` ask it to give back what it holds free, ``close()`` asks it which blocks
        live Python objects own (and keeps those mapped) and then tells it the heap is gone,
        ``stats()`` lists its caches. The first call builds it as ``kind(self)`` under
        the lock, so threads racing for it all get the same instance; the allocator keeps it
        until it is closed and collected.

        Raises:
            TypeError: ``kind`` is not a ``HeapClient`` subclass.

        Complexity: O(1).
        """
        try:
            return self._clients[kind]  # type: ignore[return-value]
        except KeyError:
            pass
        if not (isinstance(kind, type) and issubclass(kind, HeapClient)):
            raise TypeError(f"a client is a pyslab.core.HeapClient subclass, not {kind!r}")
        with self._lock:
            made = self._clients.get(kind)
            if made is None:
                made = self._clients[kind] = kind(self)
            return made  # type: ignore[return-value]

    def clients(self) -> tuple[HeapClient, ...]:
        """Every client made so far, oldest first. Complexity: O(clients)."""
        with self._lock:
            return tuple(self._clients.values())

    # --- policies -----------------------------------------------------------------------------

    def set_policy(self, policy: PolicySpec) -> None:
        """Replace the policy of a live allocator. No live block moves or is lost.

        The new policies are bound and told of every existing slab; empty slabs are then
        offered to the new ``keep_empty``. Every bound policy is unbound, or bound again when
        the new composition holds the same instance (which restarts its state).

        Other threads may go on allocating and freeing meanwhile, front ends added or removed
        included: a call that looked up the old front end's method before the switch runs in
        it after the switch, so the policies that hold blocks give them back first (``flush``)
        and a replaced front end must pass whatever such late calls leave it back to the heap
        within those calls (``thread-cache`` does: an unbound cache refills nothing and gives
        back every block pushed onto it). ``debug`` is refused while its blocks are live, below.

        Raises:
            UnknownPolicyError, PolicyError: the new policy cannot be built or bound (see
                :func:`~pyslab.policy.resolve`); or a bound policy reports
                :meth:`~pyslab.Policy.exclusive_blocks` (live blocks only it can free, such
                as ``debug``'s): unbinding or rebinding it would make them unfreeable. Free
                them first (blocks a cache in front of it holds count too: ``shrink()``
                gives them back). In every case the old policy stays bound and the
                allocator is unchanged.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(slabs) to announce them, plus what binding each policy costs.
        """
        resolved = _with_frames(lambda: resolve(parse_policies(policy)))
        self._check_closed("set_policy")
        _with_frames(lambda: self._set_policy_locked(resolved))

    def _set_policy_locked(self, resolved: ResolvedPolicy) -> None:
        with self._lock:
            self._check_closed("set_policy")  # again: close() may have run while we waited
            old = self._policy
            self._refuse_stranding(old)  # before anything changes, the flush included
            self._flush_policies("set_policy")  # held blocks go back before their holder goes
            self._exclusively("set_policy", lambda: self._rebind(old, resolved))

    @staticmethod
    def _refuse_stranding(old: ResolvedPolicy) -> None:
        """Raise PolicyError when a bound policy holds blocks that only it can free. Lock held."""
        for policy in old.policies:
            held = policy.exclusive_blocks()
            if held:
                raise PolicyError(
                    f"set_policy would strand {held} live blocks of {policy!r}: only that policy "
                    f"can free them (exclusive_blocks), and set_policy unbinds or rebinds every "
                    f"bound policy. Free them first; the policy {old.name!r} stays bound"
                )

    def _rebind(self, old: ResolvedPolicy, resolved: ResolvedPolicy) -> None:
        """Switch from ``old`` to ``resolved``: all or nothing until the switch, which is
        stores only; what follows it cannot undo it.

        Before the switch (any failure is undone, and raised): the new policies are bound and
        told of every slab, the public operations of the new front ends are built and their
        names made room for in the instance. The switch stores the hooks and replaces those
        names' values, which allocates nothing. After it, the old policies are unbound
        (:meth:`~pyslab.Policy.unbind` is expected not to fail: an error it raises for want of
        memory is dropped with the policy, any other is raised) and the empty slabs are offered
        to the new ``keep_empty`` (advice: out of memory leaves them cached).
        """
        try:
            self._bind_policies(resolved)
            operations = self._prepare_frontends(resolved)
        except BaseException:
            if any(policy in resolved.policies for policy in old.policies):
                self._bind_policies(old)  # a policy of both was bound again: restarted
            raise
        self._switch(resolved, operations)
        failure: BaseException | None = None
        kept = {id(policy) for policy in resolved.policies}
        for policy in old.policies:
            if id(policy) in kept:
                continue  # bound again just now: unbinding it would undo that
            setattr(policy, _OWNER_ATTRIBUTE, None)
            try:
                policy.unbind()
            except BaseException as error:  # see "Out of memory" in pyslab.core.guard
                failure = failure or error
        try:
            for size_class in self._classes:
                for slab in list(size_class.empty):
                    self._offer_empty(size_class, slab)
        except BaseException as error:
            failure = failure or error
        if failure is not None:
            _raise_unless_out_of_memory(failure)

    def _bind(self, resolved: ResolvedPolicy) -> None:
        """Bind ``resolved`` to a new allocator (no policy bound yet)."""
        self._bind_policies(resolved)
        try:
            operations = self._prepare_frontends(resolved)
        except BaseException:
            self._unbind_new(resolved.policies)
            raise
        self._switch(resolved, operations)

    def _bind_policies(self, resolved: ResolvedPolicy) -> None:
        """Bind every policy of ``resolved`` and tell it of every slab; on failure, unbind
        the ones bound (see :meth:`_unbind_new`) and raise. The core is not changed."""
        for policy in resolved.policies:
            owner = getattr(policy, _OWNER_ATTRIBUTE, None)
            if owner is not None and owner is not self:
                raise PolicyError(f"policy {policy!r} is already bound to another allocator")
        bound: list[Policy] = []
        try:
            for policy in resolved.policies:
                setattr(policy, _OWNER_ATTRIBUTE, self)
                bound.append(policy)
                policy.bind(self)
            if resolved.slab_added is not None:
                for size_class in self._classes:
                    for slab in size_class.slabs:
                        resolved.slab_added(size_class, slab)
        except BaseException:
            self._unbind_new(bound)
            raise

    def _switch(self, resolved: ResolvedPolicy, operations: BlockOperations | None) -> None:
        """Make ``resolved`` the allocator's policy: attribute stores, and the front-end
        names' values replaced (or removed) in the instance dict, whose room for them
        :meth:`_prepare_frontends` made. Allocates nothing after its first store (its bound
        methods are made first), so it cannot fail halfway."""
        observed = resolved.observes_blocks
        take = self._take_observed if observed else self._take_plain
        give_back = self._give_back_observed if observed else self._give_back_plain
        instance = self.__dict__
        # --- commit ---
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
        self._take = take
        self._give_back = give_back
        if operations is None:
            for name in self._FRONT_OPERATIONS:
                instance.pop(name, None)
        else:
            instance["alloc"] = operations.alloc
            instance["free"] = operations.free
            instance["usable_size"] = operations.usable_size
            instance["owns"] = operations.owns

    def _unbind_new(self, bound: Sequence[Policy]) -> None:
        """A bind failed: unbind the policies bound so far that the allocator does not use,
        so that each can be bound again (to this allocator or another). Those it uses (the
        current composition's, bound again by ``set_policy``) stay bound to it."""
        current = getattr(self, "_policy", None)
        kept = {id(policy) for policy in current.policies} if current is not None else set()
        for policy in reversed(bound):
            if id(policy) not in kept:
                with contextlib.suppress(Exception):  # the bind's own error is what is raised
                    policy.unbind()
                setattr(policy, _OWNER_ATTRIBUTE, None)

    _FRONT_OPERATIONS: Final = ("alloc", "free", "usable_size", "owns")

    def _prepare_frontends(self, resolved: ResolvedPolicy) -> BlockOperations | None:
        """The public block operations of ``resolved``'s outermost front end (None without
        one), with room made for their names in the instance dict, which shadows the class
        methods for this instance only: without a front end the instance has none of these
        names and the class methods serve directly, so the plain path pays nothing.

        Room is made by storing, under each name not yet present, the operation it stands for
        now (the class method, bound), so that :meth:`_switch` only replaces values. On
        failure the names added are removed again (which allocates nothing).
        """
        if not resolved.frontends:
            return None
        # A front end may read the composition it is part of (``heap.policy``) while it is
        # built: it is stored for that time, and the previous one stored back on failure.
        previous = getattr(self, "_policy", None)
        instance = self.__dict__
        added: list[str] = []
        try:
            self._policy = resolved
            operations: BlockOperations = _CoreOperations(
                alloc=MethodType(SlabAllocator.alloc, self),
                free=MethodType(SlabAllocator.free, self),
                usable_size=MethodType(SlabAllocator.usable_size, self),
                owns=MethodType(SlabAllocator.owns, self),
            )
            for wrap in resolved.frontends:
                operations = wrap(operations)
            for name in self._FRONT_OPERATIONS:
                if name not in instance:
                    added.append(name)
                    instance[name] = getattr(SlabAllocator, name).__get__(self)
        except BaseException:
            for name in added:
                instance.pop(name, None)
            if previous is None:
                instance.pop("_policy", None)  # a new allocator: it has no composition yet
            else:
                self._policy = previous
            raise
        return operations

    # --- whole-heap operations ----------------------------------------------------------------

    def shrink(self) -> int:
        """Return every cached empty slab to the page source, whatever the policy.

        Policies that hold blocks (per-thread caches) give them back first (``flush``).
        Returns the number of bytes released. Complexity: O(empty slabs + held blocks).
        """
        self._check_closed("shrink")
        with self._lock:
            self._check_closed("shrink")  # again: close() may have run while we waited
            self._flush_policies("shrink")
            return self._exclusively("shrink", self._release_empty_slabs)

    def _release_empty_slabs(self) -> int:
        released = self._unreleased_count * self._slab_size
        self._give_unreleased_back()
        for size_class in self._classes:
            for slab in list(size_class.empty):
                self._release_slab(size_class, slab)
                released += self._slab_size
        return released

    def _flush_policies(self, operation: str) -> None:
        """Have the clients give back what they hold free (object caches reap their slabs,
        running their destructors), then the policies the blocks they hold. Lock held, heap not
        busy: the blocks go back through the ordinary paths (``free``, ``return_blocks``)."""
        if self._busy:
            raise PyslabError(f"{operation}() cannot run inside another allocator call")
        for client in list(self._clients.values()):
            client.give_back()
        if self._policy.flush is not None:
            self._policy.flush()

    def validate(self) -> None:
        """Check every invariant of the package docstring; raise on the first one broken.

        Raises:
            CorruptionError: naming the slab, address and invariant.

        Complexity: O(slabs + free slots).
        """
        with self._lock:
            # Invariant 8 holds between calls: checked before this call can defer anything,
            # once what a settling that ran out of memory left pending is settled.
            if not self._busy:
                self._settle()
                check_unsettled(self._backlog)
        self._read("validate", self._check_invariants, consistent=True)

    def _check_invariants(self) -> None:
        if self._closed:
            self._retained.check(
                self._large.sizes, any(size_class.slabs for size_class in self._classes)
            )
            return
        seen_bases: set[int] = set()
        for size_class in self._classes:
            live = sum(
                check_slab(slab, size_class, self._slab_size, self._find_owner, seen_bases)
                for slab in size_class.slabs
            )
            check_class(size_class, live)
        if self._policy.check is not None:
            self._policy.check()
        unreleased = self._unreleased[:self._unreleased_count]
        if seen_bases.intersection(unreleased):
            raise CorruptionError(f"a listed slab awaits the release of its pages: {unreleased}")
        check_source(self._source, len(seen_bases) + len(unreleased), self._slab_size)

    def close(self) -> None:
        """Release every slab and large block, keeping mapped only what live Python objects use.

        Policies and clients first give back what they hold free (``flush``, ``give_back``);
        then each client names the blocks that live Python objects still own
        (:meth:`HeapClient.pinned_blocks`: slab-backed ctypes buffers, ``new()`` objects,
        typed slabs and their views, object-cache objects). The slab or large block holding
        each pinned block is *retained*: it stays mapped, and its addresses go to nobody else,
        until every pinned block in it has been freed (the clients free each one when its
        owner dies). Everything else is released at once, and its addresses become invalid.
        When nothing is retained, or when the last retained mapping goes, the large-block
        service and the page source are closed too (an arena is unmapped then).

        After ``close()``:

        - ``alloc``, ``calloc``, ``realloc``, ``usable_size``, ``shrink``, ``set_policy``,
          ``take_blocks`` and ``inspect`` raise :class:`~pyslab.AllocatorClosedError`;
          ``owns`` is False for every address.
        - ``free`` of a pinned block hands it back (unmapping its mapping if it was the last
          one in it); ``free`` of any other address raises ``AllocatorClosedError``.
        - ``slabs()`` is empty; ``stats()`` lists no slab in any class, its ``mapped_bytes``
          counts the retained slabs and its ``large_blocks``/``large_bytes`` the retained
          large blocks (all 0 once they are gone); ``validate()`` checks the books of the
          retained mappings.
        - The page source serves no other allocator while mappings are retained.

        Calling it twice is harmless. Raw addresses (``alloc`` called directly, the C
        functions) are never retained: using one after ``close()`` is the caller's business,
        as in C.

        Raises:
            PyslabError: called from inside another call of this allocator.
            Whatever a client's ``give_back`` or ``pinned_blocks`` (or a policy's ``flush``)
            raises: nothing has been released then, and the allocator stays open.

        Complexity: O(slabs + large blocks + pinned blocks), one ``munmap`` per released
        slab (large blocks: one libc ``free`` each); O(L log L) more for L large blocks when a
        pinned address lies inside a large block rather than at its start (a front end's).
        The alloc and free paths of an open allocator are untouched: clients are asked only
        here.
        """
        with self._lock:
            if self._closed:
                return
            self._flush_policies("close")  # every cache accounted for before the pages go
            self._exclusively("close", self._release_everything)
            for client in list(self._clients.values()):
                client.heap_closed()  # may free pinned blocks (a cache drops its slabs)

    def _release_everything(self) -> None:
        # Busy: a free that a finalizer makes from here on is deferred, so every pinned block
        # is still live when its mapping is kept, and is carried out (against the retained
        # books) once this ends.
        self._retained.keep(
            (address for client in list(self._clients.values())
             for address in client.pinned_blocks()),
            {slab.base for size_class in self._classes for slab in size_class.slabs},
            self._large.sizes,
        )
        retained = self._retained
        self._give_unreleased_back()
        for name in self._FRONT_OPERATIONS:
            self.__dict__.pop(name, None)  # the core's methods now refuse every call
        for size_class in self._classes:
            for slab in size_class.slabs:
                if not retained.holds(slab.base):
                    self._source.release_slab(slab.base, self._slab_size)
            size_class.slabs.clear()
            size_class.empty.clear()
            size_class.current = None
            size_class.live = size_class.full = 0
        for address in list(self._large.sizes):
            if not retained.holds(address):
                self._large.release(address)
        for policy in self._policy.policies:
            policy.unbind()
            setattr(policy, _OWNER_ATTRIBUTE, None)
        self._closed = True
        self._take = self._take_closed  # a call that waited for the lock during close()
        self._tables = {}
        self._find_owner = self._closed_lookup
        # free() of a pinned block finds no owner (see _closed_lookup) and takes the large
        # path, which from now on is the retained books'. An instance attribute, as the front
        # ends are: the methods of an open allocator stay exactly as they were.
        self.__dict__["_free_large"] = self._free_pinned
        if not len(retained):
            self._close_services()

    def _free_pinned(self, ptr: int) -> None:
        """``free`` after ``close()``: hand a pinned block back; the last one of a retained
        mapping unmaps it. Lock held, busy set (in place of ``_free_large``).

        Raises:
            AllocatorClosedError: ``ptr`` is not a pinned block (nothing changes).

        Complexity: O(1), plus one ``munmap`` (or libc ``free``) for a mapping's last block.
        """
        start = self._retained.unpin(ptr)
        if start is None:
            return
        if self._large.holds(start):
            self._large.release(start)
        else:
            self._source.release_slab(start, self._slab_size)
        if len(self._retained) == 1:
            # The last mapping: the source is closed before the books are emptied, so that
            # another allocator can claim it only once it is closed (see _claim_source).
            self._close_services()
        self._retained.forget(start)

    def _close_services(self) -> None:
        """Close the large-block service and the page source: nothing is retained."""
        self._large.close()
        self._source.close()

    def _take_closed(self, size_class: SizeClass, size: int) -> int:
        # An alloc that passed its checks before close() and got the lock after it.
        raise AllocatorClosedError(f"alloc({size}) on a closed allocator")

    def _closed_lookup(self, ptr: int) -> MemorySlab | None:
        # No slab is listed after close(): a pinned block has no owner, so free() takes the
        # large path, which is then _free_pinned. Every other address is refused here.
        if self._retained.pinned(ptr):
            return None
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

    def __repr__(self) -> str:
        if self._closed:
            retained = len(self._retained)
            state = f"closed, {retained} mappings retained" if retained else "closed"
        else:
            state = f"{sum(len(c.slabs) for c in self._classes)} slabs"
        return f"<SlabAllocator policy={self._policy.name} {state}>"


def _raise_unless_out_of_memory(failure: BaseException) -> None:
    """Raise ``failure`` unless it is out of memory (advice a free does not depend on: the
    free has happened, which is what its caller must hear)."""
    if isinstance(failure, MemoryError):
        return
    try:
        out_of_memory = is_out_of_memory(failure)
    except MemoryError:  # too short of memory even to read the error's message
        out_of_memory = True
    if not out_of_memory:
        raise failure


def _with_frames(work: Callable[[], _T]) -> _T:
    """``work()``, with a call inside it that could not get a frame raised as the
    ``MemoryError`` it is (see "Out of memory" in pyslab.core.guard): for the calls that
    run outside the guard."""
    try:
        return work()
    except SystemError as error:
        if is_out_of_memory(error):
            raise MemoryError(FRAME_FAILURE) from error
        raise


_UNRELEASED_SLOTS: Final = 8
"""Slabs whose pages may await their release at once (see ``_give_pages_back``)."""


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
    number = _as_int(value, what)
    if number <= 0:
        raise ValueError(f"{what} must be a positive int, not {number}")
    return number


def _checked_alignment(value: object) -> int:
    number = _as_int(value, "align")
    if number <= 0 or number & (number - 1):
        raise ValueError(f"align must be a power of two, not {number}")
    return number

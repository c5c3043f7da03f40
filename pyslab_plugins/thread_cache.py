"""``thread-cache``: per-thread magazines of free blocks, exchanged with the slabs in batches.

How the front end stays correct without a lock on its hot path
--------------------------------------------------------------
CPython with its global interpreter lock runs one thread's bytecode at a time and lets another
thread, a signal handler or a finalizer run only at certain points: at a call (a Python
function's entry, or right after a C function returns), at a backward jump, and at the
allocation of an object the cycle collector tracks. A sequence of bytecodes free of those
points is atomic. The design rests on that, and on ``deque`` pushes and pops and single dict
operations on int keys being atomic (they run no Python code). It is not safe on a build
without the GIL.

A slab block is in exactly one of three places: with a caller (live in its slab, not
*marked*), in one magazine (live, marked: its address is a key of ``_cached``), or free in its
slab. Every move is one atomic step, or leaves the block in a state every other operation
refuses:

- ``free``: the test "live and not marked" and the mark are adjacent, with no call between
  them, so of two frees of one block (two threads, or a signal handler) exactly one passes;
  the other raises ``DoubleFreeError``. The push follows (``deque.append``).
- ``alloc``: ``deque.pop`` makes the block this thread's alone; the mark is dropped after it
  (in between, a free of the block is refused: it was never handed out).
- Blocks going back to the slabs (a full magazine's oldest batch, a flush, the magazines of a
  thread that is gone) leave their stack one at a time under the allocator's lock: a pop from
  the bottom (one C-level call), the core's free, the unmark. A block stays marked until the
  core has freed it, so no free can slip in between; only addresses that the slab no longer
  holds as live lose their mark (the core defers the frees of a re-entrant call: those stay
  marked, *stale*, until they are found free in the slab, or handed out again through this
  front end).
- A refill takes, marks and pushes its blocks under the allocator's lock, one at a time.
- Every block that comes from the slabs to be handed out (a refill's, or one the layer below
  serves) loses any mark it has: a handler on this thread may take it from the slab between
  the core's free of a give-back and its unmark (the allocator's lock is re-entrant).

Another thread may drain a magazine (``flush``) while its owner pushes and pops: the pops are
disjoint, and a push that lands after the drain stays in the magazine, accounted for.

Whose magazines
---------------
Each thread has one :class:`_Magazines`, registered by ``threading.get_ident()`` with its
native thread id, and found on the hot path through a ``threading.local`` (one attribute load:
its ``stacks``, beside the ``holder`` whose end gives them back).
A thread that ``threading`` started gives its blocks back when its thread state goes (it
exits). A thread that C created gets a new Python thread state for every call into Python
(ctypes makes one per callback): its magazines stay registered between its calls, are found
again by identifier, and go back when the thread is gone (its native id no longer listed in
``/proc/self/task``, looked up when a new thread's magazines are made, every
:data:`_SWEEP_EVERY` refills, and at every ``flush``) or at ``flush`` (``shrink``, ``close``,
``set_policy``). The registry itself is updated only by atomic steps (a store, or a
compare-and-delete with no call inside): it takes no lock, so that no lock order with the
allocator's lock, and no lock held across ``fork()``, can arise.

Retirement
----------
``set_policy`` replaces the front end while other threads may be inside it (they looked the
method up before the switch). ``unbind`` retires it: its limit drops to -1, so that every later
free through it spills at once; a retired front end refills nothing (allocations go to the
layer below) and every spill gives back all the magazines of the thread that made it. Blocks
pushed by a late call therefore go back to the heap within that same call, and the
``set_policy`` that retired the front end has already flushed everything else.

``fork()``: the child has one thread. Its magazines are kept (the registry learns its new
native id); every other thread's go back to the heap, and marks left by moves another thread
was in the middle of (a block popped and not yet handed out, or marked and not yet pushed)
are dropped: those blocks stay live with no owner, like every block those threads held.

Out of memory
-------------
Any Python allocation can fail, the interpreter's own included. Every operation is written
so that ``MemoryError`` leaves each block in one of its three places, accounted for
(``validate()`` passes, ``stats()`` counts what callers hold), and the caller's blocks as they
were. Three techniques, one per kind of step:

- *Undo on error* (``free``): the mark is a dict insertion, which fails before it inserts;
  the push follows, and if it cannot get memory the mark is deleted again (a deletion
  allocates nothing): ``free`` raises ``MemoryError`` and the block is still the caller's,
  live and usable.
- *One block at a time, each committed before the next is taken* (refills, give-backs):
  a refill takes blocks from the core one by one (each take either succeeds or raises having
  changed nothing) and caches each before the next is taken; a block that cannot be cached
  is the one handed out, and when the last take fails a block just cached is handed out
  instead. A give-back pops one block, has the core free it and unmarks it; if the free
  fails, the block is pushed back where it was.
- *Pre-sized*: the stacks are ``collections.deque`` objects, which keep the block of slots
  that a pop empties, so a pop never allocates and a push right after a pop does not either:
  the push back of a failed give-back cannot fail. The stale mark a deferred free leaves is
  entered before the free, so nothing after the core's free needs memory; anything that then
  fails leaves a stale mark, settled later. The count of refills stays below 64 (CPython's
  small ints exist already), and a refill counts its batch down before each take, so that an
  int it must make finds no block in flight.

A ``free`` that has pushed its block never raises for want of memory: a spill that cannot
run gives back what it can and stops, the magazine stays over its limit, and the next free
spills again. ``flush`` (``shrink``, ``close``, ``set_policy``) stops at the first block it
cannot give back and raises ``MemoryError``, every block left still cached. A thread that
exits with no memory to give its blocks back leaves its set registered, its blocks cached,
for the next flush. No lock is held by a ``with`` block or a ``finally``: a cleanup late in a
function makes CPython (3.11 to 3.13) retry forever when memory is gone and it must push the
instruction's offset as an int (see "Out of memory" in :mod:`pyslab.core.guard`). The lock is
released in straight-line code after ``except BaseException as error``, as in the core, and
the functions with a handler are short. From a take to the block's commit there is no Python
call, since a call can fail for want of a frame (CPython's ``SystemError`` "error return
without exception set"), which the public operations report as ``MemoryError``.

Limit: above another front end (``debug+thread-cache``), refills and give-backs go through
the batch calls ``Heap.take_blocks`` and ``Heap.return_blocks``. A refill never leaves a
taken block with nobody (out of memory part way, ``take_blocks`` hands over the blocks it
took), but caching them needs memory, and so does giving back the ones that cannot be
cached, and ``return_blocks`` stopped by memory running out frees only the blocks before the
one it stopped at: there, a failure under exhaustion can leave taken blocks with nobody.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from pyslab import AllocatorClosedError, CorruptionError, DoubleFreeError, Policy
from pyslab.core import WORD_SHIFT, WORD_SIZE, MemorySlab, SizeClass, SlabIndex
from pyslab.policy import BlockOperations, Heap

__all__ = ["ThreadCache"]

_C_ALIGNMENT: Final = 2 * WORD_SIZE
"""``alignof(max_align_t)``: what ``pyslab.c_functions`` asks for blocks of 16 bytes or more,
served from the magazines too (every slot of a class is aligned to the class's alignment)."""
_MISALIGNED: Final = WORD_SIZE - 1
"""The low bits an address of a block has clear (computed once: ``free`` tests them)."""
_SWEEP_EVERY: Final = 64
"""Refills between two looks for C threads that are gone, while some C thread is registered."""
_TASKS: Final = "/proc/self/task"
"""One entry per live thread of this process, named by its native id (Linux)."""
_CHECK_ATTEMPTS: Final = 5
"""Looks ``check`` takes before reporting: another thread's move may be in flight."""
_NO_EXCEPTION_SET: Final = "without exception set"
"""What CPython's ``SystemError`` says when a call could not get a frame (out of memory)."""
_FRAME_FAILURE: Final = "out of memory: a call could not get a frame"
"""The message of the ``MemoryError`` raised in its place."""


class _Magazines:
    """One thread's magazines: a stack (a deque) of cached block addresses per size class.

    Only the owning thread pushes; the owner (at the top) and whoever drains (``flush``, a
    thread gone: at the bottom) pop, each pop atomic. ``native_id`` changes only when a new
    thread with the same identifier adopts the magazines (the old thread is gone), or in the
    child of a fork.
    """

    __slots__ = ("ident", "native_id", "python_thread", "stacks")

    def __init__(self, classes: int, ident: int, native_id: int, python_thread: bool) -> None:
        self.stacks: Final[list[deque[int]]] = [deque() for _ in range(classes)]
        self.ident: Final = ident
        self.native_id = native_id
        self.python_thread = python_thread
        """True when ``threading`` started the thread: its thread state lives as long as it
        does, so the magazines go back when the state goes."""


class _Holder:
    """What a thread state's ``threading.local`` holds: the thread's stacks for the hot path,
    and, when the thread state goes, the signal to give them back (a thread that exits) or to
    keep them (a thread that C created, between two calls)."""

    __slots__ = ("front", "installed", "magazines", "stacks")

    def __init__(self, front: _CachedOperations, magazines: _Magazines) -> None:
        # First, and a store that allocates nothing: ``__del__`` reads it first, so a holder
        # whose construction failed half way (out of memory at ``weakref.ref``) just goes.
        self.installed = False
        """True once in the thread state's ``threading.local``: only then does its end mean
        anything (a holder made by a call that a nested one beat to it just goes)."""
        # Weak: a retired front end is not kept alive by the threads that used it.
        self.front: Final = weakref.ref(front)
        self.magazines: Final = magazines
        self.stacks: Final = magazines.stacks

    def __del__(self) -> None:
        if not self.installed:
            return
        front = self.front()
        if front is not None:
            front.detach(self.magazines)


def _started_by_python(ident: int) -> bool:
    """True when ``threading`` started the thread ``ident`` (or it is the main thread).

    Reads ``threading``'s table of its threads as one dict lookup, with no lock: this runs on
    a thread's first allocator call, possibly in a finalizer inside ``threading``'s own locked
    code. A thread C created is absent, or present as a ``_DummyThread`` (made by a call to
    ``threading.current_thread()``): neither has a thread state for its whole life.
    """
    started: Mapping[int, threading.Thread] | None = getattr(threading, "_active", None)
    thread = started.get(ident) if started is not None else None
    return thread is not None and not isinstance(thread, threading._DummyThread)


class ThreadCache(Policy):
    """Magazines in the manner of Bonwick & Adams (2001): each thread keeps a bounded stack of
    free blocks per class and exchanges them with the shared slabs in batches, under the lock,
    so that the common alloc and free take no lock.

    - ``alloc`` pops the calling thread's stack of the class; an empty stack is refilled with
      ``batch`` blocks taken from the slabs under one lock.
    - ``free`` pushes onto the calling thread's stack, whichever thread allocated the block;
      a stack longer than ``magazine`` gives its ``batch`` oldest blocks back under one lock.
    - A block in a magazine is *used* for the slabs (``stats()`` counts it in
      ``cached_slots``). A thread that exits gives its blocks back; a thread that C created
      keeps its magazines across its calls and gives them back once it is gone; ``close()``,
      ``shrink()`` and ``set_policy()`` call :meth:`flush`, which takes every thread's, safely
      while other threads allocate.
    - Double frees stay detected across threads, even two frees of one block at the same
      moment: every cached address is in one shared dict, marked by the free that wins, so
      freeing a block that sits in any magazine raises ``DoubleFreeError``. Owners are found
      with a :class:`~pyslab.core.SlabIndex` of the policy's own (as ``dict-lookup``), read
      without the lock (a dict read is atomic in CPython).
    - Requests aligned to the pointer size or to ``2 * pointer size`` (C's ``max_align_t``)
      are served from the magazines; larger alignments, and large blocks, go straight to the
      layer below.
    - ``set_policy`` may add or remove the policy while other threads allocate: the front end
      it replaces is retired (see the module documentation), and every block stays accounted
      for. ``fork()`` leaves the child a consistent cache.

    Cost: memory of up to ``magazine`` blocks per class per thread held back from other
    threads; a lock every ``batch`` operations instead of every one. In CPython the global
    interpreter lock already serialises Python code, so the gain is the lock's own cost, not
    parallelism. A thread that C created pays, per call, for finding its magazines again (its
    thread state is new): a few microseconds. ``check()`` (``validate``) looks at other
    threads' magazines while they run; a move in flight is waited for, briefly.

    Args:
        magazine: blocks a thread may cache per class (default 64).
        batch: blocks moved per exchange with the slabs (default ``magazine // 2``).

    Raises:
        TypeError, ValueError: ``magazine`` or ``batch`` is not a positive int, or ``batch``
            exceeds ``magazine``.
    """

    name = "thread-cache"
    description = "per-thread magazines of free blocks (Bonwick & Adams 2001): no lock per op"

    def __init__(self, magazine: int = 64, batch: int | None = None) -> None:
        batch = magazine // 2 if batch is None and type(magazine) is int else batch
        for label, value in (("magazine", magazine), ("batch", batch)):
            if type(value) is not int:
                raise TypeError(f"{label} must be an int, not {value!r}")
            if value < 1:
                raise ValueError(f"{label} must be at least 1, not {value}")
        assert batch is not None
        if batch > magazine:
            raise ValueError(f"batch {batch} exceeds magazine {magazine}")
        self.magazine = magazine
        self.batch = batch
        self._front: _CachedOperations | None = None
        self._sets_made = 0

    @property
    def magazine_sets(self) -> int:
        """Magazine sets made since the policy was built: one per thread that used it (a
        thread reusing a gone thread's identifier adopts its set), never one per call.

        Complexity: O(1).
        """
        return self._sets_made

    def bind(self, heap: Heap) -> None:
        """Start with no magazines and an empty slab index; a front end of an earlier binding
        is retired first (``set_policy`` binding this instance again)."""
        self._retire()
        earlier: SlabIndex | None = getattr(self, "_index", None)
        if earlier is not None:
            earlier.clear()  # the retired front end's late calls find no slab (see unbind)
        super().bind(heap)
        self._index = SlabIndex(heap.slab_size)

    def unbind(self) -> None:
        """Retire the front end (its blocks go back: see the module documentation), then forget
        every slab: a late call still holding the index then finds none, rather than slabs
        whose memory may have gone back to the page source."""
        self._retire()
        self._index.clear()

    def _retire(self) -> None:
        front, self._front = self._front, None
        if front is not None:
            front.retire()

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Index the slab by base. Complexity: O(1)."""
        self._index.add(slab)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Drop the stale marks of the slab's slots, then the slab from the index (a deletion,
        which allocates nothing: out of memory, the slab stays indexed and the core keeps it).
        Complexity: O(1), plus O(stale marks) in the rare case there are any."""
        if self._front is not None:
            self._front.forget_stale_in(slab.base)
        self._index.remove(slab)

    def frontend(self, inner: BlockOperations) -> BlockOperations:
        """Wrap the operations of the layer below with the magazines."""
        self._retire()  # one front end per binding
        self._front = _CachedOperations(self, inner)
        return self._front

    def flush(self) -> None:
        """Give back every thread's cached blocks (``close``, ``shrink``, ``set_policy``),
        while other threads keep allocating if they like; forget C threads that are gone.

        Complexity: O(held + threads).
        """
        if self._front is not None:
            self._front.flush()

    def cached_blocks(self) -> Mapping[int, int]:
        """Cached blocks per slot size, over every thread (a snapshot: other threads run on).

        Complexity: O(threads * classes).
        """
        return self._front.cached_blocks() if self._front is not None else {}

    def check(self) -> None:
        """The slab index agrees with the heap; every cached address is a live block of its
        class, marked, in exactly one magazine; every mark is a block in a magazine, or a
        stale one the slab holds free.

        Raises:
            CorruptionError: naming the slab or the address (after a few looks: a move another
                thread has in flight is not reported).

        Complexity: O(slabs + cached blocks) per look.
        """
        self._index.check(self.heap.size_classes, "the thread-cache slab index")
        if self._front is not None:
            self._front.check()


_FRONT_ENDS: Final[weakref.WeakSet[_CachedOperations]] = weakref.WeakSet()
"""Every front end not yet retired, for the fork handler."""


def _after_fork_in_child() -> None:
    # Registered after the core's handler (this module imports the core first), which has
    # given every allocator a fresh lock by now: giving blocks back here is safe.
    for front in list(_FRONT_ENDS):
        front.rebuild_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _CachedOperations:
    """The block operations of a thread-cache front end, and the cache's state for one
    binding (see :class:`ThreadCache` and the module documentation)."""

    __slots__ = (
        "__weakref__", "_batch", "_by_base", "_by_size", "_by_size_c", "_cached", "_classes",
        "_free_one", "_heap", "_inner", "_largest", "_limit", "_local", "_mask", "_policy",
        "_refills", "_retired", "_stale", "_take_one", "_threads",
    )

    def __init__(self, policy: ThreadCache, inner: BlockOperations) -> None:
        heap = policy.heap
        self._policy: Final = policy
        self._heap: Final = heap
        self._inner: Final = inner
        self._classes: Final = tuple(heap.size_classes)
        largest = self._classes[-1].slot_size
        self._by_size: Final[list[SizeClass | None]] = [None]
        self._by_size.extend(heap.class_for(size) for size in range(1, largest + 1))
        self._by_size_c: Final[list[SizeClass | None]] = [None]
        self._by_size_c.extend(
            heap.class_for(size, _C_ALIGNMENT) for size in range(1, largest + 1)
        )
        self._largest: Final = largest
        # The index's dict and mask, probed inline on every free: updated in place.
        self._by_base: Final = policy._index.by_base
        self._mask: Final = policy._index.mask
        self._batch: Final = policy.batch
        # Directly on the core (the usual composition, this front end innermost): refills take
        # and give-backs free one block at a time through the core's own calls, each of which
        # changes nothing when it raises. A request of a class's slot size is served by that
        # class (checked here). Under another front end: the batch calls of ``Heap``.
        direct = getattr(inner.alloc, "__self__", None) is heap and all(
            heap.class_for(size_class.slot_size) is size_class for size_class in self._classes
        )
        self._take_one: Final[Callable[[int], int] | None] = inner.alloc if direct else None
        self._free_one: Final[Callable[[int], None] | None] = inner.free if direct else None
        self._limit = policy.magazine
        """A stack longer than this spills; -1 once retired (every push spills)."""
        self._retired = False
        self._local: Final = threading.local()
        self._threads: Final[dict[int, _Magazines]] = {}
        """Every thread's magazines, by ``threading.get_ident()``."""
        self._cached: Final[dict[int, None]] = {}
        """Every address in any magazine, and the stale marks (insertion order irrelevant)."""
        self._stale: Final[dict[int, None]] = {}
        """Marked addresses whose free the core deferred: unmarked once found free."""
        self._refills = 0
        """Refills since the last look for C threads that are gone (below _SWEEP_EVERY)."""
        _FRONT_ENDS.add(self)

    # --- the hot path ----------------------------------------------------------------------

    def alloc(self, size: int, align: int = WORD_SIZE) -> int:
        """Pop the thread's magazine; refill it from the slabs when empty.

        Raises:
            TypeError, ValueError, MemoryError: as the layer below; after a MemoryError the
                caller holds no new block (a refill may have filled the magazine).

        Complexity: O(1); a refill is O(batch) under the lock.
        """
        # The handler only stores the error: see "Out of memory" in the module documentation.
        try:
            if type(size) is int and 0 < size <= self._largest and type(align) is int:
                if align == WORD_SIZE:
                    size_class = self._by_size[size]
                elif align == _C_ALIGNMENT:
                    size_class = self._by_size_c[size]
                else:
                    size_class = None
                if size_class is not None:
                    try:
                        stacks: list[deque[int]] = self._local.stacks
                    except AttributeError:
                        stacks = self._attach().stacks
                    try:
                        address = stacks[size_class.index].pop()
                    except IndexError:
                        return self._refill(stacks, size_class, size, align)
                    del self._cached[address]  # the pop made it this thread's alone
                    return address
            return self._alloc_below(size, align)
        except BaseException as error:
            failure = error
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    def free(self, ptr: int | None) -> None:
        """Push onto the thread's magazine; spill the oldest batch when it overflows.

        Raises:
            DoubleFreeError: ``ptr`` already sits in a magazine (of any thread), or another
                thread's free of it won the race.
            InvalidFreeError: as the layer below, for every address that is not a live block.
            MemoryError: the block could not be marked or pushed; it stays live, the caller's.
            A free that has pushed the block raises nothing for want of memory: a spill that
            cannot run leaves the magazine over its limit, and the next free spills.

        Complexity: O(1); a spill is O(batch) under the lock.
        """
        failure: BaseException
        # The handlers only store the error: see "Out of memory" in the module documentation.
        try:
            if type(ptr) is int and ptr > 0 and not ptr & _MISALIGNED:
                try:
                    stacks: list[deque[int]] = self._local.stacks
                except AttributeError:
                    stacks = self._attach().stacks
                slab = self._by_base.get(ptr & self._mask)  # SlabIndex.owner, inlined
                # From the live test to the mark, no call: nothing else runs in between (see
                # the module documentation), so two frees of one block cannot both pass.
                if slab is not None and slab.live >> ((ptr - slab.base) >> WORD_SHIFT) & 1:
                    cached = self._cached
                    if ptr in cached:
                        raise DoubleFreeError(
                            f"double free of {ptr:#x}: it is in a thread cache", ptr
                        )
                    cached[ptr] = None  # may need memory: then nothing has changed
                    stack = stacks[slab.size_class.index]
                    try:
                        stack.append(ptr)
                    except BaseException as error:
                        failure = error
                    else:
                        if len(stack) > self._limit:
                            try:
                                self._spill(stack, stacks)  # raises nothing for want of memory
                            except BaseException as error:
                                failure = error
                            else:
                                return
                            if not (isinstance(failure, MemoryError) or (
                                type(failure) is SystemError
                                and _NO_EXCEPTION_SET in str(failure)
                            )):
                                raise failure
                            # The call itself could not run (no frame): the block is freed
                            # all the same, and the next free spills.
                        return
                    # Not pushed (unless a signal handler raised once the push was done): the
                    # mark goes, and the block is the caller's again. No call, no allocation.
                    if ptr not in stack:
                        del cached[ptr]
                    raise failure
            self._inner.free(ptr)
            return
        except BaseException as error:
            failure = error
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    def usable_size(self, ptr: int) -> int:
        """As the layer below, refusing blocks that sit in a magazine (they are free)."""
        try:
            if ptr in self._cached:
                slab = self._by_base.get(ptr & self._mask) if type(ptr) is int else None
                if slab is not None and slab.is_live(ptr):  # not a stale mark
                    raise DoubleFreeError(f"{ptr:#x} was freed: it is in a thread cache", ptr)
            return self._inner.usable_size(ptr)
        except BaseException as error:
            failure = error
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    def owns(self, ptr: int) -> bool:
        """As the layer below; a block in a magazine is free, so not owned by a caller."""
        try:
            return ptr not in self._cached and self._inner.owns(ptr)
        except BaseException as error:
            failure = error
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    # --- exchanges with the heap -----------------------------------------------------------

    def _alloc_below(self, size: int, align: int) -> int:
        address = self._inner.alloc(size, align)
        # _unmark_handed_out, inlined: no call once the block is taken (a call may fail).
        self._cached.pop(address, None)
        if self._stale:
            self._stale.pop(address, None)
        return address

    def _unmark_handed_out(self, address: int) -> None:
        """``address`` just came from the slabs to be handed out: it is no magazine's, so any
        mark on it goes. There can be one: the block's give-back that this call interrupted
        (a handler or a finalizer on this thread) has freed it in the slab and not yet
        unmarked it, or the core deferred that free (a stale mark). Allocates nothing.

        The paths that have just taken a block do this inline: a call could fail (for want
        of a frame) with the block taken and nobody to hand it to."""
        self._cached.pop(address, None)
        if self._stale:
            self._stale.pop(address, None)

    def _refill(self, stacks: list[deque[int]], size_class: SizeClass, size: int,
                align: int) -> int:
        """Fill the thread's empty stack of ``size_class`` with up to ``batch`` blocks under
        the allocator's lock and return one more; the layer below serves when none can be
        taken (a re-entrant call, or a retired front end).

        Raises:
            MemoryError: not one block could be had; the magazine may hold some (cached).
        """
        if self._retired:
            return self._alloc_below(size, align)
        refills = self._refills + 1  # below _SWEEP_EVERY: a small int, allocated by nobody
        if refills == _SWEEP_EVERY:
            self._sweep()  # before any block is taken: its failure changes no block of ours
            refills = 0
        self._refills = refills
        lock = self._heap.lock
        lock.acquire()  # a drain by another thread waits: the new blocks are in or not yet
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        try:
            if self._take_one is not None:
                address = self._fill(stacks[size_class.index], size_class.slot_size)
            else:
                address = self._fill_batch(stacks[size_class.index], size_class, size, align)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        lock.release()
        if failure is not None:
            raise failure
        # _unmark_handed_out, inlined (see there).
        self._cached.pop(address, None)
        if self._stale:
            self._stale.pop(address, None)
        return address

    def _fill(self, stack: deque[int], slot: int) -> int:
        """Take blocks of ``slot`` bytes from the core one at a time, caching each (marked,
        pushed) before the next is taken, and return the last. Lock held.

        Each take either succeeds or raises having changed nothing; from a take to the
        block's commit or return there is no Python call (which could fail for want of a
        frame) and nothing that fails after a change: a block that cannot be cached, or one
        the core served outside the slabs (a re-entrant call), is the one returned. When
        memory runs out before the block to return is taken, one just cached is handed out
        instead (a pop allocates nothing).

        Raises:
            MemoryError: not one block could be taken, and the stack is empty.
        """
        take = self._take_one
        assert take is not None
        cached, by_base, mask = self._cached, self._by_base, self._mask
        count = self._batch  # at least 1
        failure: BaseException
        while True:
            count -= 1  # before the take: nothing is in flight if it needs memory
            try:
                address = take(slot)
            except BaseException as error:
                failure = error
                break
            if not count:
                return address
            try:  # no call: only the allocations can fail
                if address & mask not in by_base:
                    return address
                cached[address] = None
            except MemoryError:
                return address  # not marked: still the caller's to have
            try:
                stack.append(address)
            except MemoryError:
                if address not in stack:  # not pushed (not a signal handler's error)
                    del cached[address]
                    return address
        if stack and (
            isinstance(failure, MemoryError)
            or (type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure))
        ):  # from the truth test to the pop, no point where a handler runs
            address = stack.pop()
            del cached[address]
            return address
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    def _fill_batch(self, stack: deque[int], size_class: SizeClass, size: int,
                    align: int) -> int:
        """:meth:`_fill` for a front end above another one: ``Heap.take_blocks`` takes the
        batch (fewer blocks when memory runs out once it has taken one: those are ours, and
        ``MemoryError`` only when it took none), all but the last block are cached, and those
        that cannot be go back with ``Heap.return_blocks``. Lock held.

        Under exhaustion that give-back needs memory too, so a failure to cache may leave
        blocks with nobody (see the module documentation).
        """
        heap = self._heap
        taken = heap.take_blocks(size_class, self._batch)
        if not taken:
            return self._alloc_below(size, align)
        cached, last = self._cached, len(taken) - 1
        kept = 0
        while kept < last:
            address = taken[kept]
            try:
                cached[address] = None
            except MemoryError:
                break
            try:
                stack.append(address)
            except MemoryError:
                del cached[address]
                break
            kept += 1
        if kept < last:
            heap.return_blocks(taken[kept:last])
        return taken[last]

    def _spill(self, stack: deque[int], stacks: list[deque[int]]) -> None:
        """``stack`` outgrew the limit: give back its oldest batch, or, retired, every block
        of the calling thread, under the lock. Out of memory, it gives back what it can and
        stops, leaving the rest cached, and raises nothing."""
        lock = self._heap.lock
        lock.acquire()
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        try:
            failure = self._drain_all(stacks) if self._retired else self._drain(stack, self._batch)
        except BaseException as error:
            failure = error
        lock.release()
        if failure is not None and not (
            isinstance(failure, MemoryError)
            or (type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure))
        ):
            raise failure

    def _drain_all(self, stacks: Sequence[deque[int]]) -> BaseException | None:
        """Give back every block of ``stacks``; the first out-of-memory error stops it and is
        returned (the blocks left stay cached). Lock held."""
        for stack in stacks:
            failure = self._drain(stack, -1)
            if failure is not None:
                return failure
        return None

    def _drain(self, stack: deque[int], count: int) -> BaseException | None:
        """Give back up to ``count`` blocks (all, for -1) from the bottom of ``stack``, one at
        a time, and return None; or return the out-of-memory error that stopped it, the block
        it was giving back pushed back where it was. Lock held.

        The truth test and the pop have no point between them where a handler runs; a block
        popped is out of every magazine, still marked, until the core has freed it. A push
        back after a pop allocates nothing (a deque keeps the block of slots it emptied).
        """
        cached, stale = self._cached, self._stale
        deferred = False
        while count and stack:
            count -= 1
            address = stack.popleft()
            try:
                status = self._give_back_one(address)
            except BaseException as error:
                status = error
            if status is None:
                continue
            if status is True:
                deferred = True
                continue
            assert isinstance(status, BaseException)
            if address in cached and address not in stale:
                # Nothing was done (the call itself could not run, or memory ran out first):
                # back where it was. Otherwise the error came after the free, or the core
                # refused the block, and the mark stays stale.
                stack.appendleft(address)
            if isinstance(status, MemoryError) or (
                type(status) is SystemError and _NO_EXCEPTION_SET in str(status)
            ):
                return status
            raise status
        if self._stale and not deferred:
            # The core freed every block at once, so its backlog is settled: every earlier
            # stale mark of a block the slab now holds free can go.
            self._settle_stale()
        return None

    def _give_back_one(self, address: int) -> BaseException | bool | None:
        """Free ``address`` (popped from a magazine, marked) through the core and unmark it.

        Returns None when it is done; True when the mark stays, *stale*, until the block is
        found free (the core deferred the free: a re-entrant call); the out-of-memory error
        when nothing could be done (the caller pushes the block back). Lock held.

        The block is entered as stale before the free, so that whatever fails after the free
        leaves it a stale mark, which the next settling clears; after the free, no Python
        call and nothing that raises.

        Raises:
            PyslabError: the core refused the block (it is not live); the mark stays stale.
        """
        stale = self._stale
        try:
            stale[address] = None
        except MemoryError as error:
            return error
        # The handler only stores the error: see "Out of memory" above.
        try:
            if self._free_one is not None:
                self._free_one(address)
            else:
                self._heap.return_blocks((address,))
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None:
            if isinstance(failure, MemoryError) or (
                type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure)
            ):  # the core changed nothing
                stale.pop(address, None)
                return failure
            if not isinstance(failure, AllocatorClosedError):
                raise failure  # the mark stays stale: unmarked if the block is found free
            # After close() the heap has released every slab: the block went with it.
        # Unmarked only if the slab holds it free: else the core deferred the free, or a
        # handler took the block again, and the mark stays stale (as when, out of memory,
        # the slab cannot even be looked up).
        try:
            slab = self._by_base.get(address & self._mask)
            live = slab is not None and slab.live >> ((address - slab.base) >> WORD_SHIFT) & 1
        except BaseException as error:
            failure = error
        else:
            if live:
                return True
            self._cached.pop(address, None)
            stale.pop(address, None)
            return None
        if isinstance(failure, MemoryError):
            return True
        raise failure

    def _settle_stale(self) -> None:
        """Unmark the stale addresses the slab holds free; forget those no longer marked, or
        marked again because they are back in a magazine. Lock held, backlog settled.

        Each address is settled in one step; out of memory, the rest stay stale."""
        by_base, mask, cached, stale = self._by_base, self._mask, self._cached, self._stale
        for address in list(stale):
            slab = by_base.get(address & mask)
            if slab is None or not slab.live >> ((address - slab.base) >> WORD_SHIFT) & 1:
                cached.pop(address, None)
            stale.pop(address, None)

    def forget_stale_in(self, base: int) -> None:
        """Drop the stale marks of the slab at ``base``, which goes back to the page source."""
        stale = self._stale
        if stale:
            mask, cached = self._mask, self._cached
            for address in list(stale):  # a copy taken with no point where a handler runs
                if address & mask == base:
                    stale.pop(address, None)
                    cached.pop(address, None)

    def _give_back_magazines(self, magazines: _Magazines) -> BaseException | None:
        """Give back every block of ``magazines``; the out-of-memory error that stopped it,
        or None. Takes the lock."""
        lock = self._heap.lock
        lock.acquire()
        try:
            failure = self._drain_all(magazines.stacks)
        except BaseException as error:
            failure = error
        lock.release()
        if failure is not None and not (
            isinstance(failure, MemoryError)
            or (type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure))
        ):
            raise failure
        return failure

    # --- whose magazines -------------------------------------------------------------------

    def _attach(self) -> _Holder:
        """Find (or make) the calling thread's magazines for its current thread state.

        A thread C created comes here on every call (its thread state is new each time) and
        finds its magazines by identifier. A set registered under this identifier for another
        native id belongs to a thread that is gone (an identifier is reused only then): it is
        adopted, with its blocks.

        Raises:
            MemoryError: the set is registered (or not yet) but no holder was installed: the
                next call attaches again and finds it.
        """
        magazines, new_thread = self._register()
        holder = self._install(magazines)
        if new_thread and not magazines.python_thread:
            self._sweep()  # a new C thread: others may have gone
        return holder

    def _register(self) -> tuple[_Magazines, bool]:
        """The calling thread's magazines, registered, and whether its thread is new to them
        (a new thread, or one adopting a gone thread's set)."""
        ident = threading.get_ident()
        native = threading.get_native_id()
        threads = self._threads
        magazines = threads.get(ident)
        if magazines is None:
            # Making objects may run a finalizer that allocates, and so attaches, first: then
            # its set is the thread's (setdefault is atomic), and its holder below.
            made = _Magazines(len(self._classes), ident, native, _started_by_python(ident))
            policy = self._policy
            sets_made = policy._sets_made + 1  # computed first: the store below allocates nothing
            magazines = threads.setdefault(ident, made)
            if magazines is made:
                policy._sets_made = sets_made
            return magazines, True
        if magazines.native_id != native:
            magazines.python_thread = _started_by_python(ident)
            # Both stores with no call between: a sweep that has just dropped the set (its
            # old thread is gone) sees the new native id, or finds the set registered again.
            magazines.native_id = native
            threads[ident] = magazines
            return magazines, True
        return magazines, False  # the next call of a thread C created

    def _install(self, magazines: _Magazines) -> _Holder:
        """The holder of ``magazines`` in this thread state's ``threading.local``: a nested
        call that attached first keeps its own."""
        local = self._local
        holder = _Holder(self, magazines)
        try:
            earlier: _Holder = local.holder
        except AttributeError:
            pass
        else:
            local.stacks = earlier.stacks  # may be missing: its store ran out of memory
            return earlier
        local.holder = holder  # if this fails, the holder just goes: it is not installed yet
        holder.installed = True  # from the store to here, no call
        # The hot path's one attribute load. If this store fails, the holder is installed
        # all the same, and the next call, finding no ``stacks``, attaches and stores it.
        local.stacks = holder.stacks
        return holder

    def detach(self, magazines: _Magazines) -> None:
        """A thread state holding ``magazines`` went. A thread ``threading`` started is
        exiting: its blocks go back, and its set is unregistered once empty (out of memory,
        the set stays registered, its blocks cached, until a flush gives them back). A thread
        C created keeps them for its next call."""
        if not magazines.python_thread:
            return
        if self._give_back_magazines(magazines) is not None:
            return
        threads, ident = self._threads, magazines.ident
        if ident in threads and threads[ident] is magazines:  # no call inside: atomic
            del threads[ident]

    def _sweep(self) -> None:
        """Give back the magazines of every C thread that is gone (its native id no longer in
        ``/proc/self/task``). Without ``/proc``, they go back at ``flush`` only.

        Raises:
            MemoryError: the sweep stopped; the sets not yet emptied stay registered.

        Complexity: O(threads), one directory listing.
        """
        threads = self._threads
        foreign = [(m, m.native_id) for m in list(threads.values()) if not m.python_thread]
        if not foreign:
            return
        try:
            alive = {int(name) for name in os.listdir(_TASKS)}
        except (OSError, ValueError):
            return
        for magazines, native in foreign:
            if native in alive or magazines.native_id != native:
                continue  # alive, or adopted by a new thread meanwhile
            failure = self._give_back_magazines(magazines)
            if failure is not None:
                raise failure
            ident = magazines.ident
            # Compare and delete with no call inside (atomic): a new thread that adopted the
            # set meanwhile changed its native id, and keeps it (and what it pushed since).
            if ident in threads and threads[ident] is magazines and magazines.native_id == native:
                del threads[ident]

    # --- whole-cache operations ------------------------------------------------------------

    def flush(self) -> None:
        """Give back every registered thread's blocks (each drain atomic per block), and the
        magazines of C threads that are gone. Lock held (``close``, ``shrink``,
        ``set_policy``), not re-entrant.

        Raises:
            MemoryError: the flush stopped; every block not given back stays cached.
        """
        self._sweep()
        for magazines in list(self._threads.values()):
            failure = self._give_back_magazines(magazines)
            if failure is not None:
                raise failure
        if self._stale:
            self._settle_stale()  # under the lock the caller holds

    def retire(self) -> None:
        """Stop serving (``unbind``, or a new binding): see "Retirement" in the module
        documentation. Every registered thread's blocks go back; out of memory, those that
        cannot stay in their magazines (live for the heap), and their sets registered."""
        self._retired = True
        self._limit = -1
        _FRONT_ENDS.discard(self)
        threads = self._threads
        for ident, magazines in list(threads.items()):
            if self._give_back_magazines(magazines) is None and threads.get(ident) is magazines:
                del threads[ident]

    def cached_blocks(self) -> dict[int, int]:
        """Cached blocks per slot size, over every registered thread."""
        counts: dict[int, int] = {}
        for magazines in list(self._threads.values()):
            for size_class, stack in zip(self._classes, magazines.stacks, strict=True):
                if stack:
                    slot = size_class.slot_size
                    counts[slot] = counts.get(slot, 0) + len(stack)
        return counts

    def check(self) -> None:
        """See :meth:`ThreadCache.check`. Other threads may move blocks meanwhile: a finding
        is reported only if it is still there after a few looks, with pauses that let them
        finish."""
        problem = self._problem()
        for attempt in range(1, _CHECK_ATTEMPTS):
            if problem is None:
                return
            time.sleep(0.001 * 2**attempt)  # drops the GIL: threads in flight land
            problem = self._problem()
        if problem is not None:
            raise CorruptionError(problem)

    def _problem(self) -> str | None:
        """The first broken invariant of the cache, or None. Reads copies (each atomic)."""
        by_base, mask = self._by_base, self._mask
        marked = set(self._cached)
        seen: set[int] = set()
        for magazines in list(self._threads.values()):
            for size_class, stack in zip(self._classes, magazines.stacks, strict=True):
                for address in list(stack):
                    slab = by_base.get(address & mask)
                    if slab is None or slab.size_class is not size_class:
                        return f"cached {address:#x} is not a {size_class!r} block"
                    if not slab.is_live(address) or address in seen:
                        return f"cached {address:#x} is free, or cached twice"
                    if address not in marked:
                        return f"cached {address:#x} is in a magazine but not marked as cached"
                    seen.add(address)
        for address in marked - seen:
            if address in self._stale:
                # A free the core deferred (the slab holds it free by now), or a slot that a
                # layer took from the slabs itself (debug's quarantine): never handed out here.
                continue
            slab = by_base.get(address & mask)
            if slab is not None and slab.is_live(address):
                return (
                    f"{address:#x} is marked as cached but is in no magazine ("
                    f"{len(marked)} addresses marked cached, {len(seen)} in magazines)"
                )
            return f"{address:#x} is marked as cached but is free, and not a stale mark"
        return None

    def rebuild_after_fork(self) -> None:
        """In the child of a fork: keep this thread's magazines (under its new native id),
        give back every other thread's, drop the marks of blocks in flight (see the module
        documentation)."""
        if self._retired:
            return
        ident = threading.get_ident()
        mine = self._threads.get(ident)
        others = [m for m in list(self._threads.values()) if m is not mine]
        self._threads.clear()
        if mine is not None:
            mine.native_id = threading.get_native_id()
            self._threads[ident] = mine
        for magazines in others:
            if self._give_back_magazines(magazines) is not None:
                self._threads[magazines.ident] = magazines  # out of memory: flushed later
        # The blocks of every set still registered (this thread's, and any that could not be
        # given back) keep their marks.
        kept = {a for m in list(self._threads.values()) for stack in m.stacks for a in stack}
        lock = self._heap.lock
        lock.acquire()
        try:
            self._drop_marks_in_flight(kept)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        lock.release()
        if failure is not None:
            raise failure

    def _drop_marks_in_flight(self, kept: set[int]) -> None:
        """Drop every mark that is neither a block of ``kept`` nor stale; settle the stale
        ones. Lock held (in the child of a fork)."""
        cached, stale = self._cached, self._stale
        for address in list(cached):
            if address not in kept and address not in stale:
                del cached[address]
        if stale:
            self._settle_stale()

"""The call guard: one lock, a busy flag that tells re-entrant calls apart, and their backlog.

An allocator call on one thread can be interrupted by a finalizer or a signal handler that
calls the same allocator again: the lock is re-entrant, so that second call gets in, and finds
the heap possibly half updated. The guard tells the two apart with ``_busy``, set while a call
of the thread holding the lock is inside the locked region. A re-entrant call leaves the heap
alone: it is served another way, or its work is put in ``_backlog`` and completed by the outer
call on its way out (:meth:`CallGuard._settle`).

The hot paths of the allocator test ``_busy`` and ``_backlog`` inline, with the lock taken by
explicit ``acquire``/``release``; the slow paths and the queries go through
:meth:`CallGuard._exclusively` and :meth:`CallGuard._read`. Both run ``work`` inside their own
``try``/``finally`` rather than as context managers: a signal handler's exception (Ctrl-C) can
strike at the entry of any Python function, a context manager's ``__exit__`` included, which
would then never clear the busy flag; a ``finally`` in the same frame always does.

Invariant: outside every call of the allocator, ``_busy`` is False and ``_backlog`` is empty,
unless settling it ran out of memory, in which case the next call settles it (invariant 8 of
the package docstring).

Out of memory
-------------
When memory runs out, every Python allocation can fail, even those the interpreter makes for
itself, and the public calls are written so that such a failure is a ``MemoryError`` that
changes nothing. Three facts of CPython shape the code:

- A ``finally`` or ``with`` block whose cleanup starts past the 256th instruction of its
  function makes the interpreter push the instruction's offset as an int when an exception
  passes through; with memory exhausted, that int cannot be made, and CPython 3.11 to 3.13
  retry forever (CPython gh-132508). So the hot paths and the guard catch the exception with
  ``except BaseException as error`` (whose handler does nothing that can raise), release
  the lock in straight-line code, and re-raise outside every handler.
- A call that needs a new chunk of the interpreter's frame stack, and cannot get one,
  fails with ``SystemError("error return without exception set")``: the public calls raise
  the ``MemoryError`` it is instead (:func:`is_out_of_memory`).
- ctypes reports a failure to allocate an argument as ``ctypes.ArgumentError``: the libc
  bindings turn it back into ``MemoryError`` (:mod:`pyslab.core.libc`).

Within a call, the allocator computes every new value before its first write, and commits
with attribute stores and dict deletions, which allocate nothing; the one write that may (a
slab joining a dict) comes first; a policy hook that fails after the commit has its core
writes undone by storing back saved values. See ``SlabAllocator._take_plain``.

Each policy hook of the package's plugins is all or nothing in the same way (it computes,
makes its one allocating write first, then stores), and the core meets a failing hook so that
a call either completes or raises having changed nothing:

- ``block_allocated`` and ``block_freed`` run after the core's stores, which are undone with
  saved values when the hook raises (for a free, the block's first word too, which the
  free-list link overwrote, and a slab's joining ``empty`` by a deletion): a free either
  happens or raises with the block live and intact (``_take_observed``,
  ``_give_back_observed``). Several policies that observe blocks are told one by one
  (:mod:`pyslab.policy.compose`); when one raises, those already told are reverted, last
  first, through ``revert_block_allocated`` / ``revert_block_freed``, which store back the
  objects the hook saved and delete what it inserted, allocating nothing. No revert
  re-inserts a key a dict lost (the dict may have to grow): ``fullest-first`` and ``stats``
  leave the entry a slab or block leaves as a *stale* entry, deleted by their next hook.
  The policies with reverts are told first, so one policy without them, told last, keeps
  the composed hook all or nothing.
- A call with a second step after a slab block is taken (``calloc`` zeroing it, a moving
  ``realloc`` copying into it and freeing the old block): when every policy that observes
  ``block_allocated`` can revert it (or none observes it), the core takes the block itself
  and tells the policies before the second step, which may then fail and be undone without
  memory: the revert, then the saved values (``_take_then``). The old block's free comes
  last, since nothing can undo it, and is all or nothing itself. Otherwise a move goes
  through the public ``alloc`` and ``free`` (``_by_steps``), and giving the new block back
  needs memory (the policy's ``block_freed``): under persistent exhaustion it may stay
  allocated. So it does under a front end, whose ``free`` needs memory of its own (the
  front end must be told, and a front end's books are its own: the core cannot bypass it).
- ``slab_added``: the core lists the slab, then tells each listening policy in turn; when one
  raises, those already told are told ``slab_removed`` (which allocates nothing for the index
  policies), the listing is deleted and the pages go back to the source (``_list_slab``).
- ``slab_removed`` comes before any write of the core, told to each listening policy in
  turn, last first: when one raises, those already told are told ``slab_added`` again, and
  nothing has changed (but for a policy whose ``slab_added`` then fails too: re-entering the
  slab in a dict needs memory only when the dict must grow). Giving the pages back comes
  last; when that fails for want of memory, the slab has left the heap and its base is
  recorded (pre-sized slots), its pages given back before the next slab is mapped, at
  ``shrink()`` or at ``close()`` (``_give_pages_back``). A page source counts a mapping
  before it makes it and a release before it undoes it, so no mapping goes unrecorded.
- ``slab_refilled`` and ``keep_empty`` (with the release it may ask for) are advice, asked
  once the free stands: out of memory there is swallowed, the books being consistent either
  way (``_tell_refilled``, ``_offer_empty``).
- ``select_slab`` and ``slab_color`` are decisions, made before any write of the core.

The re-entrant paths and the batch calls keep the same rule:

- A re-entrant ``free`` is deferred all or nothing (:meth:`CallGuard._defer_free`: the new
  count, then the append, then the count's store), under a handler that releases the lock
  whatever happens: it either is deferred or raises ``MemoryError`` with the block live. A
  re-entrant ``alloc`` records libc's block the same way, and gives it back to libc when it
  cannot. Both, and the re-entrant slow paths (:meth:`CallGuard._exclusively`), release the
  lock in straight-line code, and a failure to get a frame there is a ``MemoryError`` too.
- ``take_blocks`` makes, before its first take, every list a shorter batch needs (a list
  loses up to half its slots without reallocating): out of memory once it has taken a
  block, it hands over those it took, which giving back would need memory to do.
  ``return_blocks`` stopped by memory running out has freed the blocks before the one it
  stopped at (each free is all or nothing; undoing the others would need memory).

Not covered: two policies that observe blocks without the revert hooks, composed: when the
second raises, the first's update stands while the core undoes its own (and a move under
such a policy goes through the public operations, above). A revert is a call, which could
find no frame: ``_take_then`` then keeps the block taken, as the policies know it, and
raises; within the composed hook, the policies not yet reverted keep their update.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from pyslab.errors import AllocatorClosedError, PyslabError, PyslabWarning

__all__ = ["FRAME_FAILURE", "NO_EXCEPTION_SET", "CallGuard", "Deferred", "is_out_of_memory"]

_T = TypeVar("_T")

Deferred = tuple[int, int] | int
"""One backlog item: ``(address, size)`` of a block libc served a re-entrant ``alloc``, to be
recorded; or the address of a re-entrant ``free``, to be carried out."""


NO_EXCEPTION_SET: Final = "without exception set"
"""What CPython's ``SystemError`` says when a call could not get a frame (it sets no error)."""
FRAME_FAILURE: Final = "out of memory: a call could not get a frame"
"""The message of the ``MemoryError`` raised in its place."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for ``MemoryError``, and for the ``SystemError`` CPython raises when it cannot
    allocate a frame for a call. The hot paths spell the test out inline instead of calling
    this: a call, there, could fail the same way."""
    return isinstance(error, MemoryError) or (
        type(error) is SystemError and NO_EXCEPTION_SET in str(error)
    )


class CallGuard:
    """The lock, busy flag and backlog of an allocator (a base class: the hot paths of the
    subclass read these attributes directly, at the cost of no extra lookup)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # True while a call of this thread is inside the locked region: a call that finds it
        # set is re-entrant (a finalizer or signal handler interrupted the outer call).
        self._busy = False
        self._backlog: list[Deferred | None] = []  # None: settled, not yet deleted
        self._queries = 0  # queries in progress on the thread that set busy (they nest)
        # Set by close(), under the lock; a slow path that got the lock after it refuses.
        self._closed = False
        self._deferred_frees = 0
        self.deferred_errors: list[PyslabError] = []
        """Errors of deferred frees, which had no caller left to raise to (also warned)."""

    @property
    def lock(self) -> threading.RLock:
        """The allocator's re-entrant lock: hold it to read slabs consistently."""
        return self._lock

    def _complete(self, item: Deferred) -> None:
        """Carry out one backlog item (the subclass's work). Lock held, busy set.

        Raises:
            PyslabError: a deferred free was invalid; it is recorded, not raised further.
        """
        raise NotImplementedError

    def _exclusively(
        self, operation: str, work: Callable[[], _T], reentrant: Callable[[], _T] | None = None
    ) -> _T:
        """Run ``work`` under the lock as this thread's outermost allocator call (slow paths).

        When the call is re-entrant (another call of this thread is in progress, its updates
        possibly half done), ``reentrant`` runs instead, leaving the heap alone. On the way
        out, completes what re-entrant calls left in the backlog.

        Raises:
            PyslabError: re-entrant, and no ``reentrant`` alternative was given.
            AllocatorClosedError: the allocator was closed, perhaps while this call waited
                for the lock; nothing is done.
        """
        lock = self._lock
        lock.acquire()
        if self._closed:
            lock.release()
            raise AllocatorClosedError(f"{operation}() on a closed allocator")
        outermost = not self._busy
        if outermost:
            self._busy = True
        elif reentrant is None:
            lock.release()
            raise PyslabError(f"{operation}() cannot run inside another allocator call")
        else:
            work = reentrant  # the heap may be half updated: leave it alone
        # Not try/finally, and no ``with``: see "Out of memory" above. A re-entrant call runs
        # under the same handler, so that its failure for want of a frame, too, releases the
        # lock and surfaces as MemoryError.
        try:
            result = work()
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        if not outermost:
            lock.release()
        else:
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
        return result

    def _read(self, operation: str, work: Callable[[], _T], *, consistent: bool = False) -> _T:
        """Run the query ``work`` under the lock with the heap marked busy.

        A signal handler or finalizer that allocates during the walk then takes the
        re-entrant path instead of changing the dicts being walked. Queries nest (a report
        reads ``stats``). A query made from inside a mutating call (a policy hook, a finalizer)
        reads the heap as the interrupted call left it, which may be half updated: counts can
        be off by one, nothing is changed or crashed; a query that must see a ``consistent``
        heap (``validate``, a heap map) is refused instead.

        Raises:
            PyslabError: a ``consistent`` query from inside a mutating call.
        """
        lock = self._lock
        lock.acquire()
        inside = self._busy and not self._queries  # inside a mutating call (re-entrant)
        if inside and consistent:
            lock.release()
            raise PyslabError(f"{operation}() cannot run inside another allocator call")
        outermost = not self._busy
        if not inside:
            self._busy = True
            self._queries += 1
        # Not try/finally, and no ``with``: see "Out of memory" above.
        try:
            result = work()
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        if not inside:
            self._queries -= 1
        if outermost:
            self._busy = False
            if self._backlog:
                self._settle_and_release()
            else:
                lock.release()
        else:
            lock.release()
        if failure is not None:
            # Inline, not a call: a call could itself fail for want of a frame.
            if type(failure) is SystemError and NO_EXCEPTION_SET in str(failure):
                raise MemoryError(FRAME_FAILURE) from failure
            raise failure
        return result

    def _defer_free(self, ptr: int) -> None:
        """Put the free of ``ptr`` in the backlog (a re-entrant ``free``). Lock held, busy set.

        All or nothing: the new count is made first, then the append (the one write that may
        allocate: the list may grow), then the count is stored, which allocates nothing.

        Raises:
            MemoryError: no memory for the count or the backlog's growth; nothing is deferred.

        Complexity: O(1) amortized.
        """
        deferred = self._deferred_frees + 1
        self._backlog.append(ptr)
        self._deferred_frees = deferred

    def _defer_frees(self, addresses: Sequence[int]) -> None:
        """Put the frees of ``addresses`` in the backlog (a re-entrant ``return_blocks``).
        Lock held, busy set.

        All or nothing, as :meth:`_defer_free`: a list or tuple extends the backlog in one
        growth before any item is copied (another sequence is copied into a tuple first).

        Raises:
            MemoryError: no memory for the copy, the count or the growth; nothing is deferred.

        Complexity: O(len(addresses)).
        """
        items = addresses if type(addresses) in (list, tuple) else tuple(addresses)
        deferred = self._deferred_frees + len(items)
        self._backlog.extend(items)
        self._deferred_frees = deferred

    def _settle_and_release(self) -> None:
        """Settle the backlog (see :meth:`_settle`), then release the lock.

        The call that settles has done its own work: out of memory while settling is not its
        failure, and what is left stays pending for the next call. No ``finally``: see "Out
        of memory" above.

        Raises:
            What settling raised but out of memory (a signal handler's exception).
        """
        try:
            self._settle()
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        self._lock.release()
        # No message read (that allocates): a SystemError here is a frame that could not be
        # made, and the item it was for is back in the backlog.
        if failure is not None and not isinstance(failure, (MemoryError, SystemError)):
            raise failure

    def _settle(self) -> None:
        """Complete what re-entrant calls left in the backlog, oldest first. Lock held, busy
        clear.

        An invalid deferred free is recorded and warned, since its caller is gone. Each item
        is completed at the head of the backlog, all or nothing, then marked settled (None,
        a store) and deleted. Out of memory while completing, the item stays at the head;
        while deleting (a list may reallocate to shrink), the settled mark stays and is
        skipped next time. Either way settling stops, nothing is lost or done twice, and the
        next call settles the rest on its way out (invariant 8 allows exactly that).

        Raises:
            MemoryError (or a frame failure's SystemError): settling stopped, nothing lost.
        """
        self._busy = True
        try:
            backlog = self._backlog
            while backlog:
                item = backlog[0]
                if item is not None:
                    try:
                        self._complete(item)
                    except PyslabError as error:
                        backlog[0] = None  # first: recording the error may run out of memory
                        self._record_deferred_error(error)
                    backlog[0] = None
                del backlog[0]
        finally:
            self._busy = False

    def _record_deferred_error(self, error: PyslabError) -> None:
        """Record and warn the error of a deferred free, whose caller is gone."""
        self.deferred_errors.append(error)
        warnings.warn(f"deferred free failed: {error}", PyslabWarning, stacklevel=4)

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

Invariant: outside every call of the allocator, ``_busy`` is False and ``_backlog`` is empty
(invariant 8 of the package docstring).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

from pyslab.errors import PyslabError, PyslabWarning

__all__ = ["CallGuard", "Deferred"]

_T = TypeVar("_T")

Deferred = tuple[int, int] | int
"""One backlog item: ``(address, size)`` of a block libc served a re-entrant ``alloc``, to be
recorded; or the address of a re-entrant ``free``, to be carried out."""


class CallGuard:
    """The lock, busy flag and backlog of an allocator (a base class: the hot paths of the
    subclass read these attributes directly, at the cost of no extra lookup)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # True while a call of this thread is inside the locked region: a call that finds it
        # set is re-entrant (a finalizer or signal handler interrupted the outer call).
        self._busy = False
        self._backlog: list[Deferred] = []
        self._queries = 0  # queries in progress on the thread that set busy (they nest)
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
        re-entrant path instead of changing the dicts being walked. Queries nest (a report
        reads ``stats``). A query made from inside a mutating call (a policy hook, a finalizer)
        reads the heap as the interrupted call left it, which may be half updated: counts can
        be off by one, nothing is changed or crashed; a query that must see a ``consistent``
        heap (``validate``, a heap map) is refused instead.

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
                try:
                    self._complete(item)
                except PyslabError as error:
                    errors.append(error)
        finally:
            self._busy = False
        for failure in errors:
            self.deferred_errors.append(failure)
            warnings.warn(f"deferred free failed: {failure}", PyslabWarning, stacklevel=3)

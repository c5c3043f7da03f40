"""Clients: the features built on an allocator, and the one hook by which it involves them.

Buffers, the C functions and object caches live above the core and import it; the core imports
none of them. What the allocator must do on their behalf it does through this interface, for
every client alike: a client is made with :meth:`SlabAllocator.client` (one instance per
allocator and client class), and the allocator then

- asks it to give back what it holds free before ``shrink()`` and ``close()`` release memory
  (an object cache reaps its free slabs, running their destructors);
- asks it, in ``close()``, which blocks live Python objects still own (``pinned_blocks``): a
  ctypes object over a block reads that memory whenever it is used, so the slab (or large
  block) holding it must stay mapped while the object lives, or reading it would crash the
  interpreter;
- tells it when ``close()`` has released every page but those (``heap_closed``);
- lists its caches in ``stats().caches``.

Retained blocks
---------------
``close()`` releases every slab and large block at once except those holding a pinned block:
these are *retained*, and stay mapped (their addresses handed to nobody else) until every
pinned block in them is handed back. A client hands a pinned block back by calling the
allocator's ordinary ``free(address)`` once its owner is gone, exactly as it would have before
``close()``: after ``close()``, ``free`` of a pinned address releases it, and unmaps its slab
(or large block) once no other pinned block lies in it; ``free`` of any other address raises
:class:`~pyslab.AllocatorClosedError`, as before. When the last retained mapping goes, the page
source is closed and nothing of the allocator is mapped any more.

A client must therefore pin only blocks it will free, each once: a pinned block that is never
freed keeps its mapping (a leak, never a crash). Raw addresses (``alloc`` called directly, the
C functions) are not pinned: as in C, using one after ``close()`` is the caller's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .allocator import SlabAllocator
    from .stats import CacheStats

__all__ = ["ClientT", "HeapClient"]


class HeapClient:
    """Base class of a feature built on one allocator. Override what the feature needs.

    Every hook runs under the allocator's lock, from a call of the allocator; a hook may call
    the allocator (``free``, ``alloc``), which serves it as any other call, except
    :meth:`pinned_blocks`, which runs with the heap busy.
    """

    __slots__ = ("heap",)

    def __init__(self, heap: SlabAllocator) -> None:
        self.heap: SlabAllocator = heap
        """The allocator this client is built on."""

    def give_back(self) -> None:
        """``shrink()`` or ``close()`` is about to release memory: free what is held unused.

        The heap is not busy: blocks go back through the allocator's ordinary ``free``.
        """

    def pinned_blocks(self) -> Iterable[int]:
        """``close()`` is about to release every page: the blocks live Python objects own.

        Each address is one this client got from the allocator's ``alloc`` (through whatever
        front end was bound) and has not freed, and that it will free, once, when the object
        owning it dies: ``close()`` keeps the slab or large block holding each one mapped
        until then (see "Retained blocks" in the module docstring). Addresses that are no
        block of the allocator are ignored. Default: none.

        Runs with the heap busy, between the last ``give_back`` and the release of the pages:
        it must not call the allocator (a free it causes, by dropping a reference, is deferred
        and carried out after the release, as any re-entrant free).

        Complexity: the client's; called once per ``close()``.
        """
        return ()

    def heap_closed(self) -> None:
        """``close()`` released every page but the retained ones: every address of the
        allocator is invalid, except the pinned blocks until the client frees them."""

    def cache_stats(self) -> tuple[CacheStats, ...]:
        """The caches this client keeps, for ``stats().caches`` (none by default)."""
        return ()


ClientT = TypeVar("ClientT", bound=HeapClient)

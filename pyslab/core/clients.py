"""Clients: the features built on an allocator, and the one hook by which it involves them.

Buffers, the C functions and object caches live above the core and import it; the core imports
none of them. What the allocator must do on their behalf it does through this interface, for
every client alike: a client is made with :meth:`SlabAllocator.client` (one instance per
allocator and client class), and the allocator then

- asks it to give back what it holds free before ``shrink()`` and ``close()`` release memory
  (an object cache reaps its free slabs, running their destructors);
- tells it when ``close()`` has returned every page (its addresses are invalid from then on);
- lists its caches in ``stats().caches``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .allocator import SlabAllocator
    from .stats import CacheStats

__all__ = ["ClientT", "HeapClient"]


class HeapClient:
    """Base class of a feature built on one allocator. Override what the feature needs.

    Every hook runs under the allocator's lock, from a call of the allocator; a hook may call
    the allocator (``free``, ``alloc``), which serves it as any other call.
    """

    __slots__ = ("heap",)

    def __init__(self, heap: SlabAllocator) -> None:
        self.heap: SlabAllocator = heap
        """The allocator this client is built on."""

    def give_back(self) -> None:
        """``shrink()`` or ``close()`` is about to release memory: free what is held unused.

        The heap is not busy: blocks go back through the allocator's ordinary ``free``.
        """

    def heap_closed(self) -> None:
        """``close()`` returned every page: every address of the allocator is now invalid."""

    def cache_stats(self) -> tuple[CacheStats, ...]:
        """The caches this client keeps, for ``stats().caches`` (none by default)."""
        return ()


ClientT = TypeVar("ClientT", bound=HeapClient)

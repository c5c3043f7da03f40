"""Page sources: where slab memory comes from and where it goes back.

The allocator asks its page source for one slab at a time and gives slabs back one at a time; it
never calls ``mmap`` itself. Any object with the methods of :class:`PageSource` can be passed as
``SlabAllocator(page_source=...)``, for example a source that reserves one region up front.

A page source may also serve the blocks too large for any class: when it has a method
``large_objects()`` returning a :class:`LargeObjects`, the allocator uses that instead of libc
(``ArenaPageSource`` does, so that nothing but the arena serves memory after start). A source
without the method, or whose method returns None, leaves large blocks to libc.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from . import libc as _libc

__all__ = ["LargeObjects", "MmapPageSource", "PageSource"]


@runtime_checkable
class PageSource(Protocol):
    """Hands out and takes back slab memory.

    Contract: ``map_slab`` returns the address of ``size`` bytes of readable and writable memory
    aligned to ``size`` (so that ``address & ~(size - 1)`` finds the slab of any byte in it),
    that no other user holds; ``release_slab`` takes back exactly such a region.

    A source serves one allocator at a time (the allocator closes it in its own ``close``): a
    second allocator built on a source whose allocator is open raises ``ValueError``. A source
    that maps nothing once closed should say so with a ``closed`` attribute (as
    ``ArenaPageSource`` does); an allocator refuses a source whose ``closed`` is True.

    Retained slabs: an allocator's ``close()`` keeps the slabs that hold blocks live Python
    objects own (see :class:`~pyslab.core.HeapClient`), releases every other one, and calls
    ``close`` only once the last retained slab (and large block) has been released through
    ``release_slab``. Until then the source still serves that closed allocator (no other
    allocator may take it), and it never hands out a retained slab's range, since that range
    is still handed out: a source needs nothing special for this.
    """

    @property
    def page_size(self) -> int:
        """The OS page size this source works in."""
        ...

    @property
    def mapped_bytes(self) -> int:
        """Bytes currently handed out to the allocator."""
        ...

    def map_slab(self, size: int) -> int:
        """Return a fresh region of ``size`` bytes aligned to ``size``.

        Raises:
            MemoryError: no memory is left; the source is unchanged.
        """
        ...

    def release_slab(self, address: int, size: int) -> None:
        """Take back a region that :meth:`map_slab` returned."""
        ...

    def close(self) -> None:
        """Release whatever the source itself still holds."""
        ...


class LargeObjects(Protocol):
    """Serves and tracks the blocks no class serves (the role of libc by default).

    The allocator calls every method under its lock. ``record`` is also used for blocks that
    libc served to a re-entrant call (a finalizer interrupting an allocator call), which the
    service must give back to libc when they are released.
    """

    sizes: dict[int, int]
    """Live block address -> requested size."""
    @property
    def total(self) -> int:
        """Bytes requested by the live blocks."""
        ...

    def allocate(self, size: int, alignment: int) -> int:
        """Serve and record a block. Raises MemoryError, recording nothing, when it cannot."""
        ...

    def record(self, address: int, size: int) -> None:
        """Track a block that libc served to a re-entrant call."""
        ...

    def release(self, address: int) -> None:
        """Take back a live block (the caller checked :meth:`holds`)."""
        ...

    def holds(self, address: int) -> bool:
        """True when ``address`` is a live block."""
        ...

    def was_freed(self, address: int) -> bool:
        """True when ``address`` was a block freed recently (to report a double free)."""
        ...

    def close(self) -> None:
        """Release every live block. The allocator's ``close()`` first releases the blocks
        it does not retain one by one, and calls this once no retained block is left."""
        ...


class MmapPageSource:
    """The default source: each slab is its own anonymous ``mmap``, unmapped when released.

    A slab larger than a page is aligned to its size by mapping ``2 * size - page`` bytes and
    unmapping the unaligned head and tail.

    Complexity: one ``mmap`` per slab (three system calls when ``size`` exceeds a page), one
    ``munmap`` per release.

    A slab that an allocator's ``close()`` retains stays its own mapping until it is
    released, so the kernel gives its addresses to no other ``mmap`` meanwhile.
    """

    def __init__(self) -> None:
        self._page_size = _libc.PAGE_SIZE
        self._mapped = 0

    @property
    def page_size(self) -> int:
        """The OS page size, read at run time."""
        return self._page_size

    @property
    def mapped_bytes(self) -> int:
        """Bytes currently mapped for the allocator."""
        return self._mapped

    def map_slab(self, size: int) -> int:
        """Map a zeroed region of ``size`` bytes aligned to ``size``.

        Raises:
            MemoryError: the kernel refused (``ENOMEM``).
            OSError: any other ``mmap`` failure.
        """
        # The new count first: a Python allocation failing after the system call would
        # leave a mapping nobody knows of (out of memory, see pyslab.core.guard).
        mapped = self._mapped + size
        small = size <= self._page_size
        address = _libc.map_anonymous(size) if small else self._map_aligned(size)
        self._mapped = mapped
        return address

    def _map_aligned(self, size: int) -> int:
        span = 2 * size - self._page_size
        raw = _libc.map_anonymous(span)
        start = (raw + size - 1) & ~(size - 1)
        if start > raw:
            _libc.unmap(raw, start - raw)
        tail = raw + span - (start + size)
        if tail:
            _libc.unmap(start + size, tail)
        return start

    def release_slab(self, address: int, size: int) -> None:
        """Unmap the region: its pages leave the process at once. The new count is computed
        first, so that once the pages are gone nothing can fail."""
        mapped = self._mapped - size
        _libc.unmap(address, size)
        self._mapped = mapped

    def close(self) -> None:
        """Nothing to do: every slab is its own mapping and the allocator releases each."""

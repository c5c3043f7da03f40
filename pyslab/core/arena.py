"""The ``arena`` page source: one region reserved up front, slabs carved from it and given back.

This is the seed roadmap's ``no_std`` item: after the region is reserved, no ``mmap`` and no
libc call serves memory. Slabs are carved from the region aligned to their size, large blocks
(too large for any class, or aligned beyond any class) are carved from it too, and a request
the region cannot hold is refused with :class:`MemoryError`, leaving the allocator unchanged.

Memory given back goes through ``madvise(MADV_DONTNEED)``: the pages stay reserved but leave
the process's resident set at once, and read as zeros when they are used again. So every byte
of a free extent is zero, and :meth:`ArenaPageSource.map_slab` hands out zeroed memory as the
``mmap`` source does.

Layout::

    start                                                                   end
    |--slab--|--slab--|----large block----|...free...|--slab--|......free.......|
             free extents: sorted by address, disjoint, never adjacent (coalesced)

Closing the allocator while live Python objects own some of its blocks (see
:class:`~pyslab.core.HeapClient`): the allocator gives back every other slab and large block,
and closes the arena only when the last retained one has been given back. Until then the whole
region stays reserved (the free extents are ``madvise``'d out of the resident set, as ever),
so no other ``mmap`` can be given an address inside it; the arena hands out no retained range,
since those are not free extents; and no other allocator may take the arena (the closed one
still uses it). Then :meth:`ArenaPageSource.close` unmaps the region in one call, as when
nothing was retained.

The one exception to "nothing but the arena": a re-entrant allocation (a finalizer that runs
inside an allocator call on the same thread) is served by libc, because the arena may be in
the middle of an update; the block is recorded and goes back to libc when freed.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, TypeVar

from . import libc as _libc
from ._large import TrackedBlocks

_T = TypeVar("_T")

__all__ = ["ArenaLargeObjects", "ArenaPageSource"]



def _release_region(start: int, size: int) -> None:
    _libc.unmap(start, size)


class ArenaPageSource:
    """A page source over one region of ``size`` bytes reserved when it is built.

    Args:
        size: bytes to reserve, rounded up to the page size. The pages cost nothing until
            they are touched (anonymous memory), but the region never grows.
        large_objects: serve large blocks from the region too (default). False leaves them to
            libc, for a caller who wants the region for slabs only (``address-mask`` does).

    Raises:
        TypeError: ``size`` is not an int or ``large_objects`` not a bool.
        ValueError: ``size`` is not positive.
        MemoryError: the kernel refused the reservation.

    Complexity: :meth:`map_slab` and large allocations are first-fit over the free extents,
    O(free extents) (one extent while nothing has been given back); a release is a binary
    search, a list insertion and one ``madvise``. No other system call after the reservation.

    One allocator at a time: the source takes no lock of its own beyond a short one on its
    extent list; :meth:`close` (called by the allocator's ``close``, or, when that retained
    blocks live Python objects own, once the last of them is given back) unmaps the region.
    """

    def __init__(self, size: int, *, large_objects: bool = True) -> None:
        if type(size) is not int:
            raise TypeError(f"arena size must be an int, not {size!r}")
        if size <= 0:
            raise ValueError(f"arena size must be positive, not {size}")
        if type(large_objects) is not bool:
            raise TypeError(f"large_objects must be a bool, not {large_objects!r}")
        page = _libc.PAGE_SIZE
        size = -(-size // page) * page
        self._page_size: Final = page
        self._serves_large: Final = large_objects
        self.start: Final[int] = _libc.map_anonymous(size)
        """First byte of the region (page aligned)."""
        self.end: Final[int] = self.start + size
        """One past the last byte of the region."""
        # Invariant: sorted by address, disjoint, no two adjacent; every byte in them is zero.
        self._free: list[tuple[int, int]] = [(self.start, size)]
        self._mapped = 0
        self._lock = threading.Lock()
        self._closed = False
        # Unmaps the region if the source is dropped without close(): never leak the reservation.
        self._finalizer: Final = weakref.finalize(self, _release_region, self.start, size)
        self._finalizer.atexit = False  # the process is going away: nothing to give back

    # --- the PageSource protocol ------------------------------------------------------------

    @property
    def page_size(self) -> int:
        """The OS page size."""
        return self._page_size

    @property
    def mapped_bytes(self) -> int:
        """Bytes handed out as slabs (large blocks are not counted: see ``free_bytes``)."""
        return self._mapped

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has unmapped the region: the source maps nothing more, and
        an allocator refuses it. Complexity: O(1)."""
        return self._closed

    @property
    def region(self) -> tuple[int, int]:
        """``(start, end)`` of the reserved region: every slab lies inside it."""
        return self.start, self.end

    @property
    def reserved_bytes(self) -> int:
        """Size of the region."""
        return self.end - self.start

    @property
    def free_bytes(self) -> int:
        """Bytes of the region not handed out. Complexity: O(free extents)."""
        return self._locked(lambda: sum(length for _, length in self._free))

    def map_slab(self, size: int) -> int:
        """Carve ``size`` bytes aligned to ``size`` from the region.

        Raises:
            ValueError: ``size`` is not a positive multiple of the page size.
            MemoryError: no free extent holds an aligned slab; the arena is unchanged.
        """
        if type(size) is not int or size <= 0 or size % self._page_size or size & (size - 1):
            raise ValueError(
                f"slab size {size!r} is not a power-of-two multiple of the page size"
            )
        mapped = self._mapped + size  # computed first: after the take, only a store
        address = self.take(size, size)
        self._mapped = mapped
        return address

    def release_slab(self, address: int, size: int) -> None:
        """Give a slab back: its pages leave the resident set (``MADV_DONTNEED``)."""
        mapped = self._mapped - size
        self.give(address, size)
        self._mapped = mapped

    def close(self) -> None:
        """Unmap the whole region. Every address it handed out becomes invalid. Idempotent.

        Complexity: one ``munmap``.
        """
        self._locked(self._close_books)
        self._finalizer()

    def _close_books(self) -> None:
        self._closed = True
        self._free = []
        self._mapped = 0

    def large_objects(self) -> ArenaLargeObjects | None:
        """The large-block service over this arena, or None when built with
        ``large_objects=False`` (the allocator then uses libc)."""
        return ArenaLargeObjects(self) if self._serves_large else None

    # --- extents ----------------------------------------------------------------------------

    def take(self, size: int, alignment: int) -> int:
        """Carve ``size`` bytes (a page multiple) aligned to ``alignment`` (a power of two).

        Raises:
            MemoryError: no free extent holds the request; nothing changes.
            ValueError: the arena is closed.

        Complexity: O(free extents), first fit by address (low addresses are reused first,
        which keeps the used part of the region compact).
        """
        return self._locked(self._take_locked, size, alignment)

    def _take_locked(self, size: int, alignment: int) -> int:
        if self._closed:
            raise ValueError("the arena is closed")
        mask = alignment - 1
        for index, (start, length) in enumerate(self._free):
            aligned = (start + mask) & ~mask
            end = start + length
            if aligned + size <= end:
                pieces = []
                if aligned > start:
                    pieces.append((start, aligned - start))
                if aligned + size < end:
                    pieces.append((aligned + size, end - aligned - size))
                self._free[index : index + 1] = pieces
                return aligned
        raise MemoryError(
            f"the arena at {self.start:#x} ({self.end - self.start} bytes) has no free extent "
            f"of {size} bytes aligned to {alignment}"
        )

    def give(self, address: int, size: int) -> None:
        """Return ``size`` bytes at ``address`` (from :meth:`take`): ``madvise`` then coalesce.

        Raises:
            ValueError: the range is not inside the region or overlaps a free extent (the
                arena is unchanged).

        Complexity: O(log extents) to find the place, O(extents) for the list insertion.
        """
        self._locked(self._give_locked, address, size)

    def _give_locked(self, address: int, size: int) -> None:
        # Check and compute everything first; then the one write that may allocate (an
        # insertion that grows the list) is the only write, or the writes are an item
        # assignment and a deletion, which allocate nothing: out of memory changes nothing.
        if self._closed:
            raise ValueError("the arena is closed")
        end = address + size
        if not self.start <= address < end <= self.end:
            raise ValueError(f"{size} bytes at {address:#x} are not inside the arena")
        free = self._free
        index = bisect.bisect_left(free, (address, 0))
        before = free[index - 1] if index > 0 else None
        after = free[index] if index < len(free) else None
        if (before is not None and before[0] + before[1] > address) or (
            after is not None and after[0] < end
        ):
            raise ValueError(f"{size} bytes at {address:#x} overlap a free extent")
        joins_before = before is not None and before[0] + before[1] == address
        joins_after = after is not None and after[0] == end
        start = before[0] if joins_before and before is not None else address
        stop = end + after[1] if joins_after and after is not None else end
        extent = (start, stop - start)
        _libc.madvise_dontneed(address, size)  # zero again, and out of the resident set
        if joins_before:
            free[index - 1] = extent
            if joins_after:
                del free[index]
        elif joins_after:
            free[index] = extent
        else:
            free.insert(index, extent)

    def extents(self) -> list[tuple[int, int]]:
        """The free extents as ``(start, length)``, by address (a copy)."""
        return self._locked(lambda: list(self._free))

    def _locked(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(*args)`` under the arena's lock, released whatever happens.

        Not a ``with`` block: with memory exhausted, a ``with`` may fail to call ``__exit__``
        (no memory for its arguments) and leave this non-reentrant lock held for good, so the
        lock is released in straight-line code (see "Out of memory" in
        :mod:`pyslab.core.guard`)."""
        lock = self._lock
        lock.acquire()
        try:
            result = work(*args)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        lock.release()
        if failure is not None:
            raise failure
        return result

    def __repr__(self) -> str:
        return (
            f"<ArenaPageSource {self.end - self.start} bytes at {self.start:#x}: "
            f"{self._mapped} in slabs{', closed' if self._closed else ''}>"
        )


class ArenaLargeObjects(TrackedBlocks):
    """Large blocks carved from an :class:`ArenaPageSource`, in whole pages.

    Implements :class:`pyslab.core.pages.LargeObjects`. A block takes ``ceil(size / page)`` pages
    aligned to ``max(alignment, page)``; its tail beyond ``size`` is wasted (up to a page less
    one byte per block). Blocks that libc served to re-entrant calls are recorded here and go
    back to libc.

    Complexity: as :meth:`ArenaPageSource.take` and :meth:`ArenaPageSource.give`.
    """

    def __init__(self, arena: ArenaPageSource) -> None:
        super().__init__()
        self._arena: Final = arena

    @property
    def pages(self) -> int:
        """Bytes of the arena the live blocks take (whole pages). Complexity: O(blocks)."""
        return sum(
            self._pages(size) for address, size in self.sizes.items()
            if address not in self._from_libc
        )

    def _pages(self, size: int) -> int:
        page = self._arena.page_size
        return -(-size // page) * page

    def _serve(self, size: int, alignment: int) -> int:
        """Carve a block from the arena (``MemoryError`` when it cannot hold it)."""
        span = self._pages(size)
        return self._arena.take(span, max(alignment, self._arena.page_size))

    def _give_back(self, address: int, size: int) -> None:
        """Give the block's pages back to the arena (``madvise``: RSS falls)."""
        self._arena.give(address, self._pages(size))

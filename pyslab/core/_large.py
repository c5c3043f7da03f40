"""Large blocks: those larger than the largest class, or aligned beyond any class.

:class:`TrackedBlocks` keeps the books every large-object service needs (live blocks and
their sizes, recently freed addresses to tell a double free from a foreign address); a service
says only where a block comes from and where it goes back. :class:`SystemFallback`, the
default, uses libc.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from . import libc as _libc

__all__ = ["SystemFallback", "TrackedBlocks"]

_REMEMBERED_FREES: Final = 4096
"""How many freed addresses are remembered to tell a double free from a foreign address."""


class TrackedBlocks:
    """The books of a large-object service (implements :class:`pyslab.core.LargeObjects`).

    Subclasses implement :meth:`_serve` and :meth:`_give_back`. Blocks that libc served to a
    re-entrant call (a finalizer interrupting an allocator call) are recorded with
    :meth:`record` and always go back to libc.
    """

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        """Live block address -> requested size."""
        self.total = 0
        """Bytes requested by the live blocks."""
        self._from_libc: set[int] = set()
        self._recently_freed: OrderedDict[int, None] = OrderedDict()

    def _serve(self, size: int, alignment: int) -> int:
        """Return the address of a new block. Raises MemoryError when there is none."""
        raise NotImplementedError

    def _give_back(self, address: int, size: int) -> None:
        """Take back a block that :meth:`_serve` returned."""
        raise NotImplementedError

    def allocate(self, size: int, alignment: int) -> int:
        """Serve and record a block.

        Raises:
            MemoryError: no memory is left; nothing is recorded.
        """
        address = self._serve(size, alignment)
        try:
            self._track(address, size)
        except MemoryError:
            self._give_back(address, size)  # not tracked, so not kept
            raise
        return address

    def record(self, address: int, size: int) -> None:
        """Track a block that libc served to a re-entrant call; it goes back to libc."""
        self._track(address, size)
        self._from_libc.add(address)

    def _track(self, address: int, size: int) -> None:
        # The new total and the forgetting first: the last step that can fail (the dict may
        # grow) comes next, and nothing after it allocates.
        total = self.total + size
        self._recently_freed.pop(address, None)
        self.sizes[address] = size
        self.total = total

    def release(self, address: int) -> None:
        """Give a live block back (the caller checked :meth:`holds` first)."""
        size = self.sizes[address]
        before = self.total
        total = before - size
        from_libc = address in self._from_libc
        # Forgotten first, given back second: an exception between the two (a signal
        # handler's, at the call) then leaks the block at worst, never frees it twice.
        del self.sizes[address]
        self.total = total
        try:
            if from_libc:
                _libc.system_free(address)
            else:
                self._give_back(address, size)
        except MemoryError:
            # Raised before the block reached C (no memory to pass its address): still the
            # caller's, so tracked again, and the free reported as failed.
            self.sizes[address] = size
            self.total = before
            raise
        self._from_libc.discard(address)
        try:
            self._recently_freed[address] = None
            if len(self._recently_freed) > _REMEMBERED_FREES:
                self._recently_freed.popitem(last=False)
        except MemoryError:
            pass  # only a later error message's wording ("double free") depends on it

    def holds(self, address: int) -> bool:
        """True when ``address`` is a live large block."""
        return address in self.sizes

    def was_freed(self, address: int) -> bool:
        """True when ``address`` was a large block freed recently and not handed out since."""
        return address in self._recently_freed

    def close(self) -> None:
        """Release every live block and forget the freed ones.

        An allocator's ``close()`` calls it once it retains no large block: the blocks live
        Python objects own stay tracked, and are released one by one, until then.

        Complexity: O(live blocks).
        """
        for address in list(self.sizes):
            self.release(address)
        self._recently_freed.clear()


class SystemFallback(TrackedBlocks):
    """Serves blocks from libc ``malloc``/``posix_memalign`` and tracks every one it hands out.

    Tracking lets ``free`` route an address back to libc, and lets pyslab refuse a double free
    of a large block before libc sees it (glibc may crash on one without a word). Addresses
    freed recently are remembered, up to ``4096``, so that the error can say "double free".
    """

    def _serve(self, size: int, alignment: int) -> int:
        return _libc.system_malloc(size, alignment)

    def _give_back(self, address: int, size: int) -> None:
        _libc.system_free(address)

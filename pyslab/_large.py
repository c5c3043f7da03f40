"""The system fallback: blocks larger than the largest class, or aligned beyond any class."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from . import _libc

__all__ = ["SystemFallback"]

_REMEMBERED_FREES: Final = 4096
"""How many freed addresses are remembered to tell a double free from a foreign address."""


class SystemFallback:
    """Serves blocks from libc ``malloc``/``posix_memalign`` and tracks every one it hands out.

    Tracking lets ``free`` route an address back to libc, and lets pyslab refuse a double free
    of a large block before libc sees it (glibc may crash on one without a word). Addresses
    freed recently are remembered, up to ``4096``, so that the error can say "double free".
    """

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        """Live block address -> requested size."""
        self.total = 0
        """Bytes requested by the live blocks."""
        self._recently_freed: OrderedDict[int, None] = OrderedDict()

    def allocate(self, size: int, alignment: int) -> int:
        """Allocate from libc and record the block.

        Raises:
            MemoryError: libc is out of memory; nothing is recorded.
        """
        address = _libc.system_malloc(size, alignment)
        self.record(address, size)
        return address

    def record(self, address: int, size: int) -> None:
        """Track a block libc handed out (possibly while the allocator was busy)."""
        self.sizes[address] = size
        self.total += size
        self._recently_freed.pop(address, None)

    def release(self, address: int) -> None:
        """Give a tracked block back to libc. The caller checked :meth:`holds` first."""
        self.total -= self.sizes.pop(address)
        _libc.system_free(address)
        self._recently_freed[address] = None
        if len(self._recently_freed) > _REMEMBERED_FREES:
            self._recently_freed.popitem(last=False)

    def holds(self, address: int) -> bool:
        """True when ``address`` is a live large block."""
        return address in self.sizes

    def was_freed(self, address: int) -> bool:
        """True when ``address`` was a large block freed recently and not handed out since."""
        return address in self._recently_freed

    def close(self) -> None:
        """Free every live block."""
        for address in list(self.sizes):
            self.release(address)
        self._recently_freed.clear()

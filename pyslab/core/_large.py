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
from .guard import NO_EXCEPTION_SET

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
        self._from_libc: set[int] = set()
        self._recently_freed: OrderedDict[int, None] = OrderedDict()
        # A block already forgotten whose giving back failed for want of memory: 0 when none.
        # At most one (invariant): every call first gives it back, and fails, changing
        # nothing, while it cannot. Three plain fields, not a tuple: storing them allocates
        # nothing, which is what lets a release succeed with memory exhausted.
        self._awaiting_address = 0
        self._awaiting_size = 0
        self._awaiting_from_libc = False

    @property
    def total(self) -> int:
        """Bytes requested by the live blocks. Complexity: O(live blocks)."""
        return sum(self.sizes.values())

    @property
    def awaiting_release(self) -> int:
        """The address of the block forgotten but not yet given back (0 when none): its give
        back failed for want of memory, and the next call of this service retries it."""
        return self._awaiting_address

    def _serve(self, size: int, alignment: int) -> int:
        """Return the address of a new block. Raises MemoryError when there is none."""
        raise NotImplementedError

    def _give_back(self, address: int, size: int) -> None:
        """Take back a block that :meth:`_serve` returned."""
        raise NotImplementedError

    def allocate(self, size: int, alignment: int) -> int:
        """Serve and record a block.

        Raises:
            MemoryError: no memory is left; nothing is recorded (a block served but not
                recorded is given back, or awaits release).
        """
        self.retry_release()
        address = self._serve(size, alignment)
        try:
            self._track(address, size)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            failure = error
        else:
            return address
        # Not tracked, so not kept: marked as awaiting release (stores of existing objects,
        # which allocate nothing, inline: a call could fail to start), then given back.
        self._awaiting_size = size
        self._awaiting_from_libc = False
        self._awaiting_address = address
        try:
            self.retry_release()
        except BaseException as error:
            if not isinstance(error, MemoryError) and (
                type(error) is not SystemError or NO_EXCEPTION_SET not in str(error)
            ):
                raise
        raise failure

    def record(self, address: int, size: int) -> None:
        """Track a block that libc served to a re-entrant call; it goes back to libc."""
        self._track(address, size)
        self._from_libc.add(address)

    def _track(self, address: int, size: int) -> None:
        # The forgetting first: the last step that can fail (the dict may grow) comes next.
        self._recently_freed.pop(address, None)
        self.sizes[address] = size

    def release(self, address: int) -> None:
        """Give a live block back (the caller checked :meth:`holds` first).

        With memory exhausted the block is forgotten all the same, and awaits release: the
        next call of this service (or :meth:`retry_release`) gives it back. A release
        therefore fails only when an earlier block still awaits, changing nothing.

        Raises:
            MemoryError: a block already awaits release and still cannot be given back.
        """
        self.retry_release()
        # Marked as awaiting before it is forgotten, and given back after: at every instant
        # the block is tracked, awaiting, or back (an exception at any call, a failure to get
        # a frame included, loses nothing).
        size = self.sizes[address]
        from_libc = address in self._from_libc
        self._awaiting_size = size  # inline stores, as in allocate()
        self._awaiting_from_libc = from_libc
        self._awaiting_address = address
        del self.sizes[address]
        self._from_libc.discard(address)
        # The handler only stores, and the re-raise comes after it: this function is long
        # enough that an exception leaving a handler would need its offset made as an int
        # (see "Out of memory" in pyslab.core.guard).
        try:
            self.retry_release()
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None and not isinstance(failure, MemoryError) and (
            type(failure) is not SystemError or NO_EXCEPTION_SET not in str(failure)
        ):
            raise failure
        try:
            self._recently_freed[address] = None
            if len(self._recently_freed) > _REMEMBERED_FREES:
                self._recently_freed.popitem(last=False)
        except BaseException as error:
            failure = error
        else:
            failure = None
        if failure is not None and not isinstance(failure, MemoryError):
            raise failure  # out of memory is no failure here: only a later error message's
            # wording ("double free") depends on the address being remembered

    def retry_release(self) -> None:
        """Give back the block awaiting release, if any.

        The slot is emptied before the block goes, and filled again only for a failure that
        left the block allocated (``MemoryError``: no memory to pass its address; no frame for
        the call): an exception a signal handler raises once the block is back must not have
        it given back twice. An exception from elsewhere can therefore leak the block, never
        free it twice.

        Raises:
            MemoryError: it still cannot be given back; it keeps awaiting.
        """
        address = self._awaiting_address
        if not address:
            return
        self._awaiting_address = 0
        try:
            if self._awaiting_from_libc:
                _libc.system_free(address)
            else:
                self._give_back(address, self._awaiting_size)
        except BaseException as error:  # see "Out of memory" in pyslab.core.guard
            if isinstance(error, MemoryError) or (
                type(error) is SystemError and NO_EXCEPTION_SET in str(error)
            ):
                self._awaiting_address = address  # still allocated: it keeps awaiting
            raise

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
        self.retry_release()
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

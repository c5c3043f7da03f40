"""The invariant checker: every invariant of the package docstring, checked from the outside.

``SlabAllocator.validate()`` calls these under the lock with the heap held still; they read the
slabs, never write them, and raise :class:`~pyslab.CorruptionError` naming the slab, address
and invariant at the first one broken. Free lists are walked with
:meth:`MemorySlab.checked_free_list`, which checks every node before its own next pointer is
read, so a corrupted list is reported, never followed out of the slab.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import TYPE_CHECKING

from pyslab.errors import CorruptionError

from .memory import WORD_SHIFT
from .slab import MemorySlab, SizeClass

if TYPE_CHECKING:
    from .pages import PageSource

__all__ = ["check_class", "check_slab", "check_source", "check_unsettled"]


def check_slab(
    slab: MemorySlab,
    size_class: SizeClass,
    slab_size: int,
    find_owner: Callable[[int], MemorySlab | None],
    seen_bases: set[int],
) -> int:
    """Check the invariants 1-5 of one slab of ``size_class``; return its live count.

    ``seen_bases`` holds the bases of the slabs checked before (invariant 1: listed once);
    ``find_owner`` is the bound policy's.

    Raises:
        CorruptionError: naming the slab and the invariant broken
            (:class:`~pyslab.core.FreeListCorruptionError` for a free-list pointer).

    Complexity: O(slots of the slab).
    """

    def fail(what: str) -> CorruptionError:
        return CorruptionError(f"{slab!r}: {what}")

    if slab.size_class is not size_class or slab.base in seen_bases:
        raise fail("listed in the wrong class, or twice")
    seen_bases.add(slab.base)
    if slab.base % slab_size:
        raise fail(f"base is not aligned to the slab size {slab_size}")
    if not slab.base <= slab.first <= slab.bump <= slab.end <= slab.base + slab_size:
        raise fail("first <= bump <= end within the slab does not hold")
    if (slab.bump - slab.first) % slab.slot_size:
        raise fail(f"bump {slab.bump:#x} is not at a slot boundary")
    if find_owner(slab.first) is not slab:
        raise fail("the policy's find_owner does not find it")
    starts = range(slab.first, slab.bump, slab.slot_size)
    live_bits = {slab.base + (i << WORD_SHIFT) for i in range(slab.live.bit_length())
                 if slab.live >> i & 1}
    if not live_bits <= set(starts):
        raise fail("a live bit is set for an address that is not a carved slot")
    if len(live_bits) != slab.used:
        raise fail(f"used is {slab.used} but {len(live_bits)} blocks are marked live")
    # Invariant 4: the walk checks each node (a carved slot start, not live, not seen before),
    # and that the list ends once it holds the carved - used free slots.
    for _ in slab.checked_free_list():
        pass
    if (slab.used == 0) != (slab in size_class.empty):
        raise fail("the class's empty set disagrees with used")
    return slab.used


def check_class(size_class: SizeClass, live: int) -> None:
    """Check invariants 5-7 of ``size_class``, whose slabs hold ``live`` blocks.

    Raises:
        CorruptionError: naming the class and the invariant broken.

    Complexity: O(slabs of the class).
    """
    full = sum(1 for slab in size_class.slabs if slab.used == slab.capacity)
    if full != size_class.full:
        raise CorruptionError(f"{size_class!r}: full is {size_class.full} but {full} slabs are")
    if live != size_class.live:
        raise CorruptionError(
            f"{size_class!r}: live is {size_class.live} but its slabs hold {live} blocks"
        )
    if size_class.peak < live:
        raise CorruptionError(f"{size_class!r}: peak {size_class.peak} below live {live}")
    if not set(size_class.empty) <= set(size_class.slabs):
        raise CorruptionError(f"{size_class!r}: an empty slab is not one of its slabs")
    current = size_class.current
    if current is not None and (
        current not in size_class.slabs or current.used >= current.capacity
    ):
        raise CorruptionError(f"{size_class!r}: current slab {current!r} has no free slot")


def check_unsettled(backlog: Sized) -> None:
    """Invariant 8: outside every allocator call, no re-entrant work is pending.

    Raises:
        CorruptionError: the backlog holds work.
    """
    if len(backlog):
        raise CorruptionError(f"{len(backlog)} re-entrant operations not settled")


def check_source(source: PageSource, slabs: int, slab_size: int) -> None:
    """Invariant 9: the page source has handed out at least ``slab_size`` bytes per slab.

    Raises:
        CorruptionError: it reports fewer bytes mapped.
    """
    if source.mapped_bytes < slabs * slab_size:
        raise CorruptionError(
            f"the page source reports {source.mapped_bytes} bytes mapped for "
            f"{slabs} slabs of {slab_size}"
        )

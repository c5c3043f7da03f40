"""Slabs and size classes: the objects that policies see and the core's hot path updates.

A :class:`MemorySlab` is one ``slab_size`` region carved into equal slots. Its free slots are the
intrusive free list (next pointers stored in the slots, see :class:`pyslab.FreeNode`) plus the
uncarved tail ``[bump, end)``: a fresh slab links nothing up front and hands out its slots with a
bump pointer, as CPython's obmalloc does with a new pool, so no memory is touched before it is
used. A :class:`SizeClass` holds every slab of one slot size.

Both are plain ``__slots__`` objects: the core reads and writes their fields directly on the hot
path. Policies read them freely and must not write any field but ``SizeClass.current``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterator
from typing import Final, final

from pyslab.errors import CorruptionError

from .libc import POINTER_SIZE
from .memory import WORD_SHIFT, WORDS

__all__ = ["FreeListCorruptionError", "MemorySlab", "SizeClass", "SlabState"]


class SlabState(enum.Enum):
    """Where a slab is in its life (see the package docstring for the transitions)."""

    EMPTY = "empty"
    """No slot is in use; the slab can be reclaimed."""
    PARTIAL = "partial"
    """Some slots are in use and at least one is free."""
    FULL = "full"
    """Every slot is in use."""


_ALIGN_MASK: Final[int] = POINTER_SIZE - 1


@final
class MemorySlab:
    """One slab: ``capacity`` slots of ``slot_size`` bytes starting at ``first``.

    Fields (each with the invariant the core keeps):

    - ``base``: address of the mapping, aligned to the page source's slab alignment.
    - ``first``: address of slot 0, ``base + color`` (``color`` is 0 without slab coloring).
    - ``end``: ``first + capacity * slot_size``; never past ``base + slab_size``.
    - ``free``: head of the intrusive free list, 0 when it is empty.
    - ``bump``: next never-used slot; slots in ``[bump, end)`` are free and unlinked.
    - ``used``: number of live blocks, ``0 <= used <= capacity``.
    - ``live``: bitmap of live blocks, bit ``(address - base) >> 3`` set for each; ``used`` bits.
    - ``serial``: creation number, unique in the allocator and increasing.
    """

    __slots__ = (
        "base", "bump", "capacity", "end", "first", "free", "live", "serial", "size_class",
        "slot_size", "used",
    )

    def __init__(
        self, size_class: SizeClass, base: int, color: int, slab_size: int, serial: int
    ) -> None:
        slot_size = size_class.slot_size
        self.size_class: Final = size_class
        self.slot_size: Final = slot_size
        self.base: Final = base
        self.first: Final = base + color
        self.capacity: Final = (slab_size - color) // slot_size
        self.end: Final = self.first + self.capacity * slot_size
        self.serial: Final = serial
        self.free = 0
        self.bump = self.first
        self.used = 0
        self.live = 0

    @property
    def state(self) -> SlabState:
        """The slab's state, derived from ``used``. Complexity: O(1)."""
        if self.used == 0:
            return SlabState.EMPTY
        return SlabState.FULL if self.used == self.capacity else SlabState.PARTIAL

    @property
    def free_count(self) -> int:
        """Free slots, linked or not yet carved. Complexity: O(1)."""
        return self.capacity - self.used

    def contains(self, address: int) -> bool:
        """True when ``address`` lies in this slab's mapping (any byte of it). Complexity: O(1)."""
        return self.base <= address < self.base + self.size_class.slab_size

    def is_live(self, address: int) -> bool:
        """True when ``address`` is the start of a live block of this slab. Complexity: O(1)."""
        return (
            self.first <= address < self.bump
            and not address & _ALIGN_MASK
            and (address - self.first) % self.slot_size == 0
            and bool(self.live >> ((address - self.base) >> WORD_SHIFT) & 1)
        )

    def slot_addresses(self) -> range:
        """Start addresses of every slot, in address order. Complexity: O(1)."""
        return range(self.first, self.end, self.slot_size)

    def free_list(self) -> Iterator[int]:
        """Walk the intrusive free list from its head, reading the next pointers from memory.

        Yields each node before reading its next pointer, and stops after ``capacity`` nodes,
        so a caller that checks every address it gets cannot be led outside the slab; on a
        list that may be corrupted, :meth:`checked_free_list` does the checking.

        Complexity: O(length of the list).
        """
        node = self.free
        for _ in range(self.capacity):
            if not node:
                return
            yield node
            node = WORDS[node >> WORD_SHIFT]

    def free_list_fault(self, node: int, seen: Collection[int] = ()) -> str | None:
        """Why ``node`` cannot be the next link of this slab's free list, or None when it can.

        ``node`` is a next pointer (or the head, ``free``) and ``seen`` the nodes of the list
        before it. A node can be next when it is a carved slot start of this slab that is not
        live and not in ``seen``; 0, the end of the list, when ``seen`` holds every free carved
        slot (invariant 4 of the package docstring). The answer completes the sentence
        "the pointer holds <node>, ...", as the error messages put it. Reads the slab's fields,
        never memory: a node is proven to lie in the slab before anyone reads its next pointer.

        Complexity: O(1) when ``seen`` is a set (or the empty tuple).
        """
        if not node:
            free = (self.bump - self.first) // self.slot_size - self.used
            if len(seen) == free:
                return None
            nodes = f"{len(seen)} node" + "s" * (len(seen) != 1)
            return f"the end of the list after {nodes}, yet {free} carved slots are free"
        if not self.first <= node < self.end:
            return f"outside the slots of the slab at {self.base:#x}"
        if node & _ALIGN_MASK or (node - self.first) % self.slot_size:
            return "not at a slot start (misaligned)"
        if node >= self.bump:
            return "a slot never handed out"
        if self.live >> ((node - self.base) >> WORD_SHIFT) & 1:
            return "a live block"
        if node in seen:
            return "a slot already on the list (a cycle)"
        return None

    def checked_free_list(self) -> Iterator[int]:
        """Walk the free list from its head as :meth:`free_list` does, checking every link.

        Each node is checked with :meth:`free_list_fault` before it is yielded and before its
        own next pointer is read, so a corrupted list is reported, never followed out of the
        slab; the pointer that ends the list is checked too (the list holds every free carved
        slot). The walk ends after at most ``capacity`` nodes: each one yielded is a distinct
        slot of the slab.

        Raises:
            FreeListCorruptionError: at the first pointer that cannot be the next link (it
                names the slab, the free slot holding the pointer, the value and why).

        Complexity: O(length of the list).
        """
        seen: set[int] = set()
        holder: int | None = None
        node = self.free
        while True:
            fault = self.free_list_fault(node, seen)
            if fault is not None:
                raise FreeListCorruptionError(self, holder, node, fault)
            if not node:
                return
            yield node
            seen.add(node)
            holder = node
            node = WORDS[node >> WORD_SHIFT]

    def __repr__(self) -> str:
        return (
            f"<slab #{self.serial} {self.slot_size}B at {self.base:#x}: "
            f"{self.used}/{self.capacity} used>"
        )


class FreeListCorruptionError(CorruptionError):
    """A free list that cannot be followed: a pointer in it cannot be the next link.

    Raised by :meth:`MemorySlab.checked_free_list`. Its fields let a caller word its own
    report (the ``debug`` policy adds what it knows of the block freed in ``holder``):

    - ``slab``: the slab whose list it is.
    - ``holder``: the free slot whose first word holds the pointer, or None for the head
      (``slab.free``).
    - ``node``: the pointer's value (0: the list ends there).
    - ``reason``: why it cannot be the next link (:meth:`MemorySlab.free_list_fault`).
    """

    def __init__(self, slab: MemorySlab, holder: int | None, node: int, reason: str) -> None:
        where = (
            "its free-list head is" if holder is None
            else f"the free-list pointer in the free slot at {holder:#x} holds"
        )
        super().__init__(f"{slab!r}: {where} {node:#x}, {reason}")
        self.slab = slab
        self.holder = holder
        self.node = node
        self.reason = reason

    def __reduce__(self) -> tuple[type[CorruptionError], tuple[object, ...]]:
        # The slab is this process's object: across a process boundary (pickling) the error
        # travels as the CorruptionError its message states.
        return CorruptionError, self.args


@final
class SizeClass:
    """Every slab of one slot size, and the slab the fast path allocates from.

    - ``slabs``: every slab of the class in creation order (a dict used as an ordered set, so
      that removal is O(1)).
    - ``empty``: the slabs with ``used == 0``, in the order they became empty.
    - ``current``: a slab with a free slot, or None; the fast path pops from it. Placement
      policies may set it; the core clears it when it fills.
    - ``live`` / ``peak``: live blocks of the class now, and the most there ever were.
    - ``full``: how many of its slabs are full (so a placement walk can tell at once that no
      slab has room).
    """

    __slots__ = (
        "alignment", "current", "empty", "full", "index", "live", "peak", "slab_size", "slabs",
        "slot_size", "slots_per_slab",
    )

    def __init__(self, index: int, slot_size: int, slab_size: int, alignment: int) -> None:
        self.index: Final = index
        self.slot_size: Final = slot_size
        self.slab_size: Final = slab_size
        self.alignment: Final = alignment
        self.slots_per_slab: Final = slab_size // slot_size
        self.slabs: dict[MemorySlab, None] = {}
        self.empty: dict[MemorySlab, None] = {}
        self.current: MemorySlab | None = None
        self.live = 0
        self.peak = 0
        self.full = 0

    def __repr__(self) -> str:
        return f"<SizeClass {self.slot_size}B: {len(self.slabs)} slabs, {self.live} live>"

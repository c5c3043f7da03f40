"""Pictures of the heap, as data: a frozen snapshot of every slab and every slot.

:func:`heap_map` returns a :class:`HeapMap`:
every size class, every slab of it, and for each slab the state of each slot and the order of
its free list, read from the next pointers stored in the free slots themselves (the same words
C code reads through :class:`pyslab.FreeNode`). A snapshot is plain immutable data: it can be
kept, compared, printed (``print(heap_map(alloc))`` draws it as text, a line per slab) or
drawn with :func:`pyslab.observe.render_map`.

Every slot of a slab is exactly one of (invariant 4 of the package docstring):

- :attr:`SlotState.LIVE`: a block handed out and not freed;
- :attr:`SlotState.FREE`: freed before and linked on the slab's intrusive free list;
- :attr:`SlotState.UNCARVED`: never handed out yet, past the slab's bump pointer.

Free slots are the last two together. The snapshot reads the live slab objects, so
:func:`heap_map` takes it with the heap held still (``SlabAllocator.inspect``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from pyslab.core import WORD_SHIFT, MemorySlab, SizeClass, SlabAllocator, SlabState
from pyslab.errors import CorruptionError

__all__ = ["ClassMap", "HeapMap", "SlabMap", "SlotState", "heap_map"]


class SlotState(enum.Enum):
    """What one slot of a slab holds at the moment of the snapshot."""

    LIVE = "live"
    """A block handed out and not freed."""
    FREE = "free"
    """A freed slot, linked on the slab's intrusive free list."""
    UNCARVED = "uncarved"
    """A slot never handed out: it lies in the slab's uncarved tail ``[bump, end)``."""


_LIVE: Final = SlotState.LIVE
_FREE: Final = SlotState.FREE
_UNCARVED: Final = SlotState.UNCARVED
# A carved slot's state from its bit in the slab's live bitmap ("1": live, "0": linked free).
_CARVED_STATE: Final = {"1": _LIVE, "0": _FREE}


@dataclass(frozen=True)
class SlabMap:
    """One slab at the moment of the snapshot.

    Invariants (checked when built; ``ValueError`` names the one broken):
    ``len(slots) == capacity``; ``used``, ``linked`` and ``uncarved`` count the slots of each
    state; ``free_list`` holds the index of every ``FREE`` slot exactly once, in list order;
    uncarved slots form the tail of ``slots`` (the bump pointer only moves up).
    """

    serial: int
    """Creation number of the slab, unique in its allocator."""
    slot_size: int
    """Bytes per slot."""
    base: int
    """Address of the slab's mapping."""
    first: int
    """Address of slot 0 (``base`` plus the slab's color)."""
    capacity: int
    """Slots in the slab."""
    used: int
    """Live blocks."""
    linked: int
    """Free slots on the free list."""
    uncarved: int
    """Free slots never handed out (the tail past the bump pointer)."""
    current: bool
    """True when the slab is its class's ``current`` slab, the one allocations pop from."""
    slots: tuple[SlotState, ...] = field(repr=False)
    """The state of every slot, in address order (slot ``i`` starts at :meth:`address` ``(i)``)."""
    free_list: tuple[int, ...] = field(repr=False)
    """Slot indices of the free list, from its head, following the next pointers in memory."""

    def __post_init__(self) -> None:
        if len(self.slots) != self.capacity:
            raise ValueError(f"slab #{self.serial}: {len(self.slots)} slot states for "
                             f"capacity {self.capacity}")
        counts = (self.slots.count(_LIVE), self.slots.count(_FREE), self.slots.count(_UNCARVED))
        if counts != (self.used, self.linked, self.uncarved):
            raise ValueError(
                f"slab #{self.serial}: slots hold {counts} live/free/uncarved, not "
                f"{(self.used, self.linked, self.uncarved)}"
            )
        if self.uncarved and _UNCARVED in self.slots[: self.capacity - self.uncarved]:
            raise ValueError(f"slab #{self.serial}: an uncarved slot lies below the bump pointer")
        if len(set(self.free_list)) != self.linked or not all(
            0 <= i < self.capacity and self.slots[i] is _FREE for i in self.free_list
        ):
            raise ValueError(
                f"slab #{self.serial}: the free list {self.free_list[:8]}... does not hold "
                f"each of the {self.linked} free slots once"
            )

    @property
    def free(self) -> int:
        """Free slots: linked plus uncarved."""
        return self.capacity - self.used

    @property
    def carved(self) -> int:
        """Slots handed out at least once (below the bump pointer)."""
        return self.capacity - self.uncarved

    @property
    def occupancy(self) -> float:
        """Live fraction of the slab's slots, in ``[0, 1]``."""
        return self.used / self.capacity

    @property
    def state(self) -> SlabState:
        """EMPTY, PARTIAL or FULL, as :attr:`MemorySlab.state`."""
        if self.used == 0:
            return SlabState.EMPTY
        return SlabState.FULL if self.used == self.capacity else SlabState.PARTIAL

    def address(self, index: int) -> int:
        """Start address of slot ``index``.

        Raises:
            IndexError: ``index`` is not in ``range(capacity)`` (the message names it).
        """
        if not 0 <= index < self.capacity:
            raise IndexError(f"slot {index} is not in range({self.capacity}) of slab "
                             f"#{self.serial}")
        return self.first + index * self.slot_size

    def free_list_addresses(self) -> tuple[int, ...]:
        """The free list as slot addresses, from its head. Complexity: O(linked)."""
        return tuple(self.first + i * self.slot_size for i in self.free_list)


@dataclass(frozen=True)
class ClassMap:
    """One size class: its slabs in creation order, oldest first."""

    slot_size: int
    """Bytes per slot."""
    slabs: tuple[SlabMap, ...]
    """Every slab of the class, oldest first."""

    @property
    def used(self) -> int:
        """Live blocks of the class."""
        return sum(s.used for s in self.slabs)

    @property
    def capacity(self) -> int:
        """Slots in all slabs of the class."""
        return sum(s.capacity for s in self.slabs)

    @property
    def free(self) -> int:
        """Free slots (linked plus uncarved) in all slabs of the class."""
        return self.capacity - self.used

    @property
    def linked(self) -> int:
        """Free slots on free lists."""
        return sum(s.linked for s in self.slabs)

    @property
    def uncarved(self) -> int:
        """Free slots never handed out."""
        return sum(s.uncarved for s in self.slabs)

    def count(self, state: SlabState) -> int:
        """Slabs of the class in ``state``."""
        return sum(1 for s in self.slabs if s.state is state)


@dataclass(frozen=True)
class HeapMap:
    """Every slab of an allocator, class by class, at one moment.

    ``str(heap_map)`` is :meth:`to_text` with its defaults.
    """

    policy: str
    """The policy composition, as ``a+b``."""
    slab_size: int
    """Bytes per slab."""
    classes: tuple[ClassMap, ...]
    """Every size class, smallest slot first, those without slabs included."""
    slabs_made: int = 0
    """Slabs the allocator has made so far (the next slab's serial): a serial below it that no
    class holds belongs to a slab released to the page source."""

    @property
    def slabs(self) -> tuple[SlabMap, ...]:
        """Every slab, class by class, oldest first (the order of ``SlabAllocator.slabs()``)."""
        return tuple(s for c in self.classes for s in c.slabs)

    @property
    def used(self) -> int:
        """Live slab blocks."""
        return sum(c.used for c in self.classes)

    @property
    def capacity(self) -> int:
        """Slots in every slab."""
        return sum(c.capacity for c in self.classes)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of slab memory: ``slab_size`` per slab."""
        return self.slab_size * sum(len(c.slabs) for c in self.classes)

    def size_class(self, slot_size: int) -> ClassMap:
        """The class of ``slot_size``-byte slots.

        Raises:
            KeyError: no class has that slot size (the message names it).
        """
        for class_map in self.classes:
            if class_map.slot_size == slot_size:
                return class_map
        sizes = [c.slot_size for c in self.classes]
        raise KeyError(f"no {slot_size!r}-byte size class; the classes are {sizes}")

    def to_text(
        self, *, width: int = 64, max_slabs: int = 16, free_list: bool = False,
        ascii: bool = False,
    ) -> str:
        """Draw the heap as text, in the seed's diagram style: a line per slab.

        Each slab line shows its serial, base address, its slots between ``│ │`` (one cell per
        slot, or per group of slots when the slab has more than ``width``: the cell then shows
        the live fraction of the group), and its occupancy::

            #3  0x7f3a1c003000 │████░░█··········│  5/16  31% partial

        Args:
            width: most cells per slab line (at least 8).
            max_slabs: most slab lines per class (at least 2): of a class with more slabs,
                the oldest and newest are drawn and those in between summarised in one line
                (how many are full, partial, empty, and their live slots).
            free_list: add a line under each slab with its free list in order, ``[3]→[0]→[9]``
                (slot indices, as the seed's ``[free]→[free]``).
            ascii: use only ASCII characters (``#`` live, ``o`` free, ``.`` uncarved).

        Raises:
            TypeError: ``width`` or ``max_slabs`` is not an int.
            ValueError: ``width`` is below 8 or ``max_slabs`` below 2 (the message names it).

        Complexity: O(slots of the slabs shown).
        """
        for name, value, least in (("width", width, 8), ("max_slabs", max_slabs, 2)):
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {value!r}")
            if value < least:
                raise ValueError(f"{name} must be at least {least}, not {value}")
        glyphs = _ASCII if ascii else _UNICODE
        lines = [
            f"heap map: policy {self.policy}, {self.slab_size}-byte slabs, "
            f"{len(self.slabs)} slab{'s' * (len(self.slabs) != 1)} "
            f"({_kib(self.mapped_bytes)} mapped), "
            f"{self.used}/{self.capacity} slots live{_percent(self.used, self.capacity)}",
            f"  {glyphs.live} live   {glyphs.free} free, on the free list   "
            f"{glyphs.uncarved} free, never carved   "
            f"{glyphs.partial} part live (a cell of several slots)",
        ]
        for class_map in self.classes:
            if class_map.slabs:
                lines.extend(_class_lines(class_map, width, max_slabs, free_list, glyphs))
        if not self.slabs:
            lines.append("(no slabs)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# --- capture --------------------------------------------------------------------------------


def heap_map(heap: SlabAllocator) -> HeapMap:
    """A frozen snapshot of every slab of ``heap``: its slots (live, free-linked or uncarved)
    and the order of its free list, read from the next pointers in memory.

    ``print(heap_map(heap))`` draws it as text; :func:`pyslab.observe.render_map` as a
    picture. The snapshot is taken with the heap held still (``heap.inspect``), so it is
    consistent even while other threads allocate and free. It shows the slabs as the core sees
    them: a block that a policy's front end (a per-thread cache) holds counts as live.

    Raises:
        AllocatorClosedError: the allocator was closed.
        PyslabError: called from inside another call of ``heap`` (a finalizer or a policy
            hook), when the heap may be half-updated.
        CorruptionError: a slab's bitmap, count or free list is inconsistent (it names the
            slab); nothing is changed.

    Complexity: O(slots of every slab); reads every free slot's next pointer.
    """
    return heap.inspect(
        "heap_map",
        lambda: _capture(heap.size_classes, heap.slab_size, heap.policy.name, heap.slabs_made),
    )


def _capture(
    size_classes: Sequence[SizeClass], slab_size: int, policy: str, slabs_made: int
) -> HeapMap:
    """Snapshot every slab of ``size_classes``; the heap is held still.

    ``slabs_made`` is the allocator's count of slabs made (:attr:`HeapMap.slabs_made`).
    Slot states come from each slab's live bitmap and bump pointer, the free-list order from the
    next pointers stored in the free slots (:meth:`MemorySlab.checked_free_list`). Every node
    is checked to be a free carved slot of its slab before its own next pointer is read, so a
    corrupted list is reported, never followed out of the slab.

    Raises:
        CorruptionError: a slab's bitmap, ``used`` count or free list disagree (the message
            names the slab and what is wrong); no snapshot is returned.

    Complexity: O(slots of every slab).
    """
    classes = tuple(
        ClassMap(
            c.slot_size,
            tuple(_capture_slab(slab, slab is c.current) for slab in c.slabs),
        )
        for c in size_classes
    )
    return HeapMap(policy, slab_size, classes, slabs_made)


def _capture_slab(slab: MemorySlab, current: bool) -> SlabMap:
    size = slab.slot_size
    carved = (slab.bump - slab.first) // size
    # Bit (address - base) >> WORD_SHIFT of ``live`` marks a live block: slot i's bit is at
    # offset + i * step. The reversed binary string puts bit k at index k.
    offset = (slab.first - slab.base) >> WORD_SHIFT
    step = size >> WORD_SHIFT
    bits = format(slab.live, "b")[::-1]
    flags = bits[offset::step][:carved].ljust(carved, "0")
    live = flags.count("1")
    if live != slab.used or slab.live.bit_count() != live:
        raise CorruptionError(
            f"{slab!r}: used is {slab.used}, the live bitmap has {slab.live.bit_count()} bits "
            f"of which {live} mark carved slots"
        )
    # Each node is checked (a free carved slot start, not seen before) before its next pointer
    # is read, and the list must hold all carved - live free slots: so the "0" flags are
    # exactly the slots of ``order``.
    order = [(node - slab.first) // size for node in slab.checked_free_list()]
    states = tuple(map(_CARVED_STATE.__getitem__, flags)) + (_UNCARVED,) * (slab.capacity - carved)
    return SlabMap(
        serial=slab.serial, slot_size=size, base=slab.base, first=slab.first,
        capacity=slab.capacity, used=live, linked=len(order), uncarved=slab.capacity - carved,
        current=current, slots=states, free_list=tuple(order),
    )


# --- text rendering -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Glyphs:
    live: str
    free: str
    uncarved: str
    partial: str
    levels: str  # part-live cells, by live fraction (lowest first)
    bar: str
    arrow: str
    more: str


_UNICODE: Final = _Glyphs("█", "░", "·", "▁…▇", "▁▂▃▄▅▆▇", "│", "→", "⋮")
_ASCII: Final = _Glyphs("#", "o", ".", "+", "+++++++", "|", "->", ":")


def _class_lines(
    class_map: ClassMap, width: int, max_slabs: int, free_list: bool, glyphs: _Glyphs
) -> list[str]:
    slabs = class_map.slabs
    widest = max(s.capacity for s in slabs)
    group = math.ceil(widest / width)
    grouping = f", 1 cell = {group} slots" if group > 1 else ""
    lines = [
        f"{class_map.slot_size}-byte class: {len(slabs)} slab{'s' * (len(slabs) != 1)}, "
        f"{class_map.used}/{class_map.capacity} live{_percent(class_map.used, class_map.capacity)}"
        f", {class_map.linked} on free lists, {class_map.uncarved} never carved{grouping}"
    ]
    serial_width = max(len(str(s.serial)) for s in slabs) + 1
    count_width = len(str(widest))
    shown: Iterable[SlabMap | None]
    if len(slabs) > max_slabs + 1:  # a summary line in place of one slab line saves nothing
        head = max_slabs // 2
        shown = (*slabs[:head], None, *slabs[len(slabs) - (max_slabs - head):])
    else:
        shown = slabs
    for slab in shown:
        if slab is None:
            hidden = slabs[max_slabs // 2: len(slabs) - (max_slabs - max_slabs // 2)]
            lines.append(f"  {glyphs.more} {_summary(hidden)}")
            continue
        state = slab.state.value + (", current" if slab.current else "")
        lines.append(
            f"  {'#' + str(slab.serial):<{serial_width}} {slab.base:#014x} "
            f"{glyphs.bar}{_cells(slab, group, glyphs)}{glyphs.bar} "
            f"{slab.used:>{count_width}}/{slab.capacity:<{count_width}} "
            f"{round(100 * slab.occupancy):>3}% {state}"
        )
        if free_list:
            lines.append(" " * (serial_width + 18) + _free_list_text(slab, glyphs))
    return lines


def _cells(slab: SlabMap, group: int, glyphs: _Glyphs) -> str:
    if group == 1:
        return "".join(_glyph_of(state, glyphs) for state in slab.slots)
    cells = []
    for start in range(0, slab.capacity, group):
        chunk = slab.slots[start:start + group]
        live = chunk.count(_LIVE)
        if live == len(chunk):
            cells.append(glyphs.live)
        elif live == 0:
            cells.append(glyphs.uncarved if chunk.count(_UNCARVED) == len(chunk) else glyphs.free)
        else:
            level = min(len(glyphs.levels) - 1, max(0, round(live / len(chunk) * 8) - 1))
            cells.append(glyphs.levels[level])
    return "".join(cells)


def _glyph_of(state: SlotState, glyphs: _Glyphs) -> str:
    if state is _LIVE:
        return glyphs.live
    return glyphs.free if state is _FREE else glyphs.uncarved


def _free_list_text(slab: SlabMap, glyphs: _Glyphs, shown: int = 10) -> str:
    if not slab.free_list:
        return f"free list: empty ({slab.uncarved} never carved)"
    chain = glyphs.arrow.join(f"[{i}]" for i in slab.free_list[:shown])
    rest = len(slab.free_list) - shown
    return f"free list: {chain}" + (f"{glyphs.arrow}... +{rest} more" if rest > 0 else "")


def _summary(slabs: Sequence[SlabMap]) -> str:
    used = sum(s.used for s in slabs)
    capacity = sum(s.capacity for s in slabs)
    states = {state: sum(1 for s in slabs if s.state is state) for state in SlabState}
    return (
        f"{len(slabs)} more slab{'s' * (len(slabs) != 1)}: {states[SlabState.FULL]} full, "
        f"{states[SlabState.PARTIAL]} partial, {states[SlabState.EMPTY]} empty; "
        f"{used}/{capacity} live{_percent(used, capacity)}"
    )


def _percent(part: int, whole: int) -> str:
    return f" ({round(100 * part / whole)}%)" if whole else ""


def _kib(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"

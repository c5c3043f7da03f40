"""Typed object slabs: a fixed number of slots of one ctypes type, addressed by index.

:class:`Slab` is the typed, fixed-capacity ``Slab<T, N>`` that Rust programs write over an
array of ``Option<T>`` with a stack of free indices, on real memory: ``capacity`` slots of one
ctypes type laid out contiguously, as a C array, in memory that C code can read and write. It
is for storage addressed by a small integer handle whose size is known up front: packet
buffers, sensor readings, descriptor tables, the records a C library keeps pointers into. It
is not a growable container (it never reallocates, so an index and the address of its slot
stay valid while the slab is open) and not a cache of constructed objects (that is
:class:`pyslab.ObjectCache`).

Semantics, against Rust's ``Slab<T, N>``
---------------------------------------
=========================  ==================================  ===================================
operation                  ``Slab<T, N>`` (Rust)               pyslab
=========================  ==================================  ===================================
``new()`` / constructor    ``N`` slots of ``Option<T>``        ``Slab(ctype, capacity, *,
                                                               allocator=None)``: ``capacity``
                                                               slots of ``ctype`` in slab memory
``insert(value)``          ``Some(index)``, ``None`` if full   ``int``, ``None`` if full
free-index order           ``free_list = (0..N).rev()``: a     the same stack: the first insert
                           stack, last freed reused first      gets 0, the last freed index is
                                                               reused first
``remove(index)``          ``Some(value)``; ``None`` if empty  the value (a copy); ``None`` if
                           or ``index >= N``                   empty or outside
                                                               ``0..capacity-1`` (negative too)
``get(index)``             a clone, or ``None``                a copy, or ``None``
values                     any ``T`` (moved in)                an instance of ``ctype``, or what
                                                               ctypes converts to one (an ``int``
                                                               for ``c_int``, a tuple for a
                                                               structure); anything else raises
                                                               ``TypeError``
sharing                    ``RefCell``: one thread, a second   a lock: safe from many threads;
                           borrow panics                       re-entrant calls (finalizers) work
=========================  ==================================  ===================================

Beyond the Rust type: :meth:`Slab.view` (the live ctypes object in place, no copy, for zero-copy use
with C), ``len``, :attr:`~Slab.capacity`, :attr:`~Slab.is_full`, ``index in slab`` (occupied),
iteration over ``(index, value)`` of occupied slots, :meth:`~Slab.clear`, :meth:`~Slab.close`,
and :meth:`~Slab.validate`, which checks the invariants below.

Values are converted exactly as ctypes converts them, silent truncation included: an ``int``
too large for ``c_int`` is stored modulo 2**32, as ``c_int(2**40)`` would be.

Memory
------
The slots come from, in this order: the ``allocator`` given; the allocator installed with
``pyslab.install()``, if any; otherwise a private anonymous ``mmap`` of whole pages. A slab of
``capacity * sizeof(ctype)`` bytes up to the allocator's largest size class is one block of a
size class; a larger one is a large block of the allocator (libc, or the page source's).

The memory is given back when the slab is closed *and* no view of it is alive: a view keeps the
memory mapped, so it never dangles after :meth:`Slab.close` or garbage collection. Closing the
*allocator* does not unmap it either: the slot array is tied to its block as a slab-backed
buffer is (:meth:`pyslab.interop.SlabBuffers.adopt`), so the allocator's ``close()`` retains
the block while the slab is open or a view lives, and unmaps it when the last of them goes.
Once the allocator is closed the slab's own operations raise
:class:`~pyslab.AllocatorClosedError`; its views keep reading and writing their slots.

Performance notes
-----------------
Every operation is O(1) but iteration, :meth:`~Slab.clear` and :meth:`~Slab.validate`, which are
O(capacity). ``get``, ``remove`` and iteration build a new ctypes object per value (about a
microsecond); ``view`` builds one that shares the slot. Values are converted before the lock is
taken, so the locked region is a few list and bytearray operations and one ``memcpy``.

Implementation
--------------
Occupancy lives beside the slots, not in them (a slot may be smaller than a pointer): a
``bytearray`` of flags and a Python list used as the free-index stack. Invariants, checked
by :meth:`Slab.validate`:

1. ``len(free) + len(slab) == capacity``.
2. The free stack holds distinct indices in ``0..capacity-1``, none of them occupied.
3. Exactly ``len(slab)`` flags are set.

A copy or a view is a new ctypes object, and allocating it may run a finalizer that uses this
very slab (the lock is re-entrant). So reads note a version number (bumped by every change)
before building the object, and retry if it moved: a value is never torn or stale.
"""

from __future__ import annotations

import ctypes
import operator
import threading
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

from pyslab.core import PAGE_SIZE, SlabAllocator, libc, protect_across_fork
from pyslab.errors import AllocatorClosedError, CorruptionError
from pyslab.interop import buffers, current

if TYPE_CHECKING:
    from ctypes import _CData
    from typing import TypeAlias

__all__ = ["CT", "Convertible", "Slab"]

CT = TypeVar("CT", bound="_CData")
"""A ctypes data type: a simple type (``c_int``), a structure, a union, an array or a pointer."""

Convertible: TypeAlias = "int | float | bytes | str | tuple[Any, ...] | None"
"""Python values that ctypes may convert to a ctypes instance: what :meth:`Slab.insert` accepts
beside an instance. ctypes, not the type checker, decides whether a given one fits the type."""

_COMPOUND: Final = (ctypes.Structure, ctypes.Union, ctypes.Array)


def own_block(allocator: SlabAllocator, owner: object, address: int) -> None:
    """Tie ``allocator``'s block at ``address`` to the ctypes object ``owner`` over it.

    The block is freed when ``owner`` is collected, and ``allocator.close()`` keeps it mapped
    while ``owner`` lives (see :meth:`pyslab.interop.SlabBuffers.adopt`).

    Raises:
        AllocatorClosedError: the allocator was closed meanwhile (the block went with it).

    Complexity: O(1).
    """
    buffers(allocator).adopt(owner, address)


def _installed_allocator() -> SlabAllocator | None:
    """The allocator installed with ``pyslab.install()``, if any."""
    return current()


def checked_ctype(ctype: object, who: str) -> int:
    """Return ``sizeof(ctype)`` for a ctypes data type of non-zero size.

    Raises:
        TypeError: ``ctype`` is not a ctypes data type.
        ValueError: its size is 0 (a structure without fields).
    """
    if not isinstance(ctype, type):
        raise TypeError(f"{who} takes a ctypes type (c_int, a Structure...), not {ctype!r}")
    try:
        size = ctypes.sizeof(ctype)
    except TypeError:
        raise TypeError(
            f"{who} takes a ctypes type (c_int, a Structure...), not {ctype.__name__}"
        ) from None
    if size == 0:
        raise ValueError(f"{who} cannot hold {ctype.__name__}: its size is 0")
    return size


@final
class Slab(Generic[CT]):
    """``capacity`` slots of one ctypes type in slab memory, addressed by index 0..capacity-1.

    >>> from ctypes import c_int
    >>> slab = Slab(c_int, 4)
    >>> slab.insert(10), slab.insert(c_int(20))
    (0, 1)
    >>> slab.get(1).value, slab.remove(0).value, slab.remove(0)
    (20, 10, None)
    >>> slab.insert(30)  # the index freed last is reused first
    0
    >>> slab.close()

    Args:
        ctype: the type of every slot: a simple ctypes type, a structure, a union, an array
            type or a pointer type.
        capacity: the number of slots, at least 1. It never changes.
        allocator: where the slots' memory comes from. Default: the installed allocator, if
            any, else a private ``mmap``.

    Raises:
        TypeError: ``ctype`` is not a ctypes type, ``capacity`` not an int, ``allocator`` not a
            :class:`~pyslab.SlabAllocator`.
        ValueError: ``capacity < 1``, or ``ctype`` has size 0.
        MemoryError: no memory for the slots.
        AllocatorClosedError: the allocator was closed.

    Complexity: one allocation (or one ``mmap``), plus O(capacity) to build the free stack.
    """

    __slots__ = (
        "__weakref__", "_address", "_allocator", "_array", "_capacity", "_compound", "_copy_of",
        "_ctype", "_free", "_len", "_lock", "_occupied", "_simple", "_size", "_version",
        "_view_of",
    )

    def __init__(
        self, ctype: type[CT], capacity: int, *, allocator: SlabAllocator | None = None
    ) -> None:
        size = checked_ctype(ctype, "Slab")
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {capacity!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if allocator is not None and not isinstance(allocator, SlabAllocator):
            raise TypeError(f"allocator must be a SlabAllocator or None, not {allocator!r}")
        source = allocator if allocator is not None else _installed_allocator()
        nbytes = size * capacity
        if source is None:
            length = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
            address = libc.map_anonymous(length)
        else:
            length = nbytes
            address = source.alloc(nbytes, ctypes.alignment(ctype))
        maker: Any = ctype  # typeshed types from_buffer & co. on metaclasses _CData lacks
        array: ctypes.Array[CT] = (maker * capacity).from_address(address)
        # The slot array owns the memory: every view holds it (from_buffer keeps its source
        # alive), so the memory goes back only when the slab is closed and no view is left;
        # and an allocator's close() keeps it mapped until then.
        if source is None:
            weakref.finalize(array, libc.unmap, address, length).atexit = False
        else:
            own_block(source, array, address)
        self._ctype: Final = ctype
        self._size: Final = size
        self._view_of: Final[Callable[[ctypes.Array[CT], int], CT]] = maker.from_buffer
        self._copy_of: Final[Callable[[ctypes.Array[CT], int], CT]] = maker.from_buffer_copy
        self._capacity: Final = capacity
        self._address: Final = address
        self._allocator: Final = source
        self._simple: Final = issubclass(ctype, ctypes._SimpleCData)
        self._compound: Final = issubclass(ctype, _COMPOUND)
        # None once closed.
        self._array: ctypes.Array[CT] | None = array
        # The free-index stack of Slab<T, N>: free indices, popped from the end; (0..N).rev().
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        # occupied[i] is 1 exactly when slot i holds a value.
        self._occupied = bytearray(capacity)
        # Occupied slots: capacity - len(free).
        self._len = 0
        # Bumped by every change, so that a read can tell it raced a re-entrant call.
        self._version = 0
        self._lock = threading.RLock()
        protect_across_fork(self)

    # --- the operations of Slab<T, N> ------------------------------------------------------

    def insert(self, value: CT | Convertible) -> int | None:
        """Store ``value`` in a free slot and return its index; ``None`` when the slab is full.

        The index is the one freed last, or the lowest never used (the first insert gets 0).
        ``value`` is converted before anything else, so a bad value raises even when full.

        Raises:
            TypeError: ``value`` is neither a ``ctype`` instance nor something ctypes converts
                to one (an ``int`` for ``c_int``, a tuple of field values for a structure).
            AllocatorClosedError: the slab or its allocator was closed.

        Complexity: O(1): the conversion, a pop and one ``memcpy`` of the slot.
        """
        item = self._converted(value)
        with self._lock:
            array = self._open_array("insert")
            free = self._free
            if not free:
                return None
            index = free.pop()
            try:
                array[index] = item
            except BaseException:
                free.append(index)
                raise
            self._occupied[index] = 1
            self._len += 1
            self._version += 1
            return index

    def remove(self, index: int) -> CT | None:
        """Empty slot ``index`` and return a copy of its value.

        Returns ``None`` when the slot is empty or ``index`` is outside ``0..capacity-1``.
        The index becomes the next one :meth:`insert` hands out.

        Raises:
            TypeError: ``index`` is not an int.
            AllocatorClosedError: the slab or its allocator was closed.

        Complexity: O(1).
        """
        with self._lock:
            value = self._copy(index, "remove")
            if value is not None:
                self._occupied[index] = 0
                self._free.append(index)
                self._len -= 1
                self._version += 1
            return value

    def get(self, index: int) -> CT | None:
        """A copy of the value in slot ``index``; ``None`` when empty or out of range.

        The copy is independent of the slot: changing one leaves the other as it was.

        Raises:
            TypeError: ``index`` is not an int.
            AllocatorClosedError: the slab or its allocator was closed.

        Complexity: O(1) (a ``memcpy`` of one slot).
        """
        with self._lock:
            return self._copy(index, "get")

    # --- beyond Slab<T, N> -----------------------------------------------------------------

    def view(self, index: int) -> CT | None:
        """The live ctypes object in slot ``index``, sharing its memory; ``None`` when empty.

        Writes through the view change the slot, and ``ctypes.addressof(view)`` is the slot's
        address, to hand to C. A view stays attached to its slot: after :meth:`remove` it sees
        whatever the slot holds next. It keeps the slab's memory mapped while it lives, even
        after :meth:`close` and after the allocator's ``close()``.

        Raises:
            TypeError: ``index`` is not an int.
            AllocatorClosedError: the slab or its allocator was closed.

        Complexity: O(1) (no copy).
        """
        with self._lock:
            array = self._open_array("view")
            while True:
                if not self._occupied_slot(index):
                    return None
                version = self._version
                live = self._view_of(array, index * self._size)
                if version == self._version:
                    return live

    def __len__(self) -> int:
        """The number of occupied slots. Complexity: O(1)."""
        return self._len

    @property
    def capacity(self) -> int:
        """The number of slots, fixed at construction."""
        return self._capacity

    @property
    def is_full(self) -> bool:
        """True when every slot is occupied (:meth:`insert` would return ``None``)."""
        return self._len == self._capacity

    def __contains__(self, index: object) -> bool:
        """True when ``index`` is an occupied slot (False for anything that is not an index).

        Complexity: O(1).
        """
        if isinstance(index, bool) or not isinstance(index, int):
            return False
        return 0 <= index < self._capacity and bool(self._occupied[index])

    def __iter__(self) -> Iterator[tuple[int, CT]]:
        """``(index, copy of the value)`` for every occupied slot, in index order.

        The pairs are a snapshot taken under the lock: later changes do not show.

        Raises:
            AllocatorClosedError: the slab or its allocator was closed.

        Complexity: O(capacity).
        """
        with self._lock:
            array = self._open_array("iter")
            copy = self._copy_of
            size = self._size
            while True:
                version = self._version
                occupied = self._occupied
                items = [
                    (i, copy(array, i * size)) for i in range(self._capacity) if occupied[i]
                ]
                if version == self._version:
                    return iter(items)

    def clear(self) -> None:
        """Empty every slot; the next insert gets index 0 again, as in a new slab.

        The slots' bytes are not touched.

        Raises:
            AllocatorClosedError: the slab or its allocator was closed.

        Complexity: O(capacity).
        """
        free = list(range(self._capacity - 1, -1, -1))
        occupied = bytearray(self._capacity)
        with self._lock:
            self._open_array("clear")
            self._free = free
            self._occupied = occupied
            self._len = 0
            self._version += 1

    @property
    def ctype(self) -> type[CT]:
        """The type of every slot."""
        return self._ctype

    @property
    def address(self) -> int:
        """The address of slot 0; slot ``i`` is at ``address + i * sizeof(ctype)``."""
        return self._address

    @property
    def allocator(self) -> SlabAllocator | None:
        """The allocator the slots came from, or ``None`` for a private mapping."""
        return self._allocator

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._array is None

    def validate(self) -> None:
        """Check the invariants of the module docstring.

        Raises:
            CorruptionError: naming the invariant broken.

        Complexity: O(capacity).
        """
        with self._lock:
            free, occupied = self._free, self._occupied
            if len(free) + self._len != self._capacity:
                raise CorruptionError(
                    f"{self!r}: {len(free)} free + {self._len} occupied != {self._capacity}"
                )
            if len(set(free)) != len(free) or not all(0 <= i < self._capacity for i in free):
                raise CorruptionError(f"{self!r}: the free stack repeats or leaves the range")
            if any(occupied[i] for i in free):
                raise CorruptionError(f"{self!r}: an occupied slot is on the free stack")
            if occupied.count(1) != self._len:
                raise CorruptionError(
                    f"{self!r}: {occupied.count(1)} slots flagged, {self._len} counted"
                )

    def close(self) -> None:
        """Give the memory back (once no view of it is left). Calling it twice is harmless.

        Every later operation raises :class:`~pyslab.AllocatorClosedError`.

        Complexity: O(1), plus one ``free`` or ``munmap`` when no view is alive.
        """
        with self._lock:
            self._array = None
            self._free = []
            self._occupied = bytearray(self._capacity)
            self._len = 0
            self._version += 1

    def __enter__(self) -> Slab[CT]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._len}/{self._capacity} used"
        return f"<Slab[{self._ctype.__name__}] {state} at {self._address:#x}>"

    # --- helpers -----------------------------------------------------------------------------

    def _converted(self, value: object) -> CT:
        """``value`` as a ``ctype`` instance, converted as ctypes would (outside the lock)."""
        ctype: Any = self._ctype
        item: CT
        try:
            if isinstance(value, ctype):
                item = value
            elif self._simple:
                item = ctype(value)
            elif self._compound and isinstance(value, tuple):
                item = ctype(*value)
            else:
                raise TypeError(f"expected {ctype.__name__} or what ctypes converts to it")
            return item
        except (TypeError, RuntimeError) as error:  # ctypes wraps nested field errors
            raise TypeError(
                f"a Slab of {ctype.__name__} cannot hold {value!r}: {error}"
            ) from error

    def _open_array(self, operation: str) -> ctypes.Array[CT]:
        """The slot array; raises when the slab or its allocator is closed. Lock held."""
        array = self._array
        if array is None:
            raise AllocatorClosedError(f"{operation}() on a closed Slab")
        if self._allocator is not None and self._allocator.closed:
            raise AllocatorClosedError(
                f"{operation}() on a Slab whose allocator was closed (views made before "
                f"still read their slots)"
            )
        return array

    def _occupied_slot(self, index: object) -> bool:
        """True when ``index`` is an occupied slot; False when empty or out of range."""
        if type(index) is not int:
            if isinstance(index, bool) or not hasattr(index, "__index__"):
                raise TypeError(f"a slot index is an int, not {index!r}")
            index = operator.index(index)
        return 0 <= index < self._capacity and bool(self._occupied[index])

    def _copy(self, index: int, operation: str) -> CT | None:
        """A copy of occupied slot ``index``, or None. Lock held."""
        array = self._open_array(operation)
        while True:
            if not self._occupied_slot(index):
                return None
            version = self._version
            value = self._copy_of(array, index * self._size)
            if version == self._version:
                return value

"""A slab-backed ctypes object's block is freed when the last Python object that can reach its
memory dies: never earlier, whatever is derived from it, and never twice.

Each test runs on real memory. While a derived object lives, the block stays live (``owns``,
``live_blocks``) and keeps its bytes even as other buffers of the same size class come and go
(were it free, they would take its slot, last in first out, and overwrite it); once the last
holder is gone, the block is freed. Scenarios that would read unmapped memory if the lifetime
were wrong run in a child interpreter, where a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import pickle
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import pyslab
from pyslab.interop import live_objects

ROOT = Path(__file__).resolve().parent.parent
PATTERN = b"pattern-" * 6  # 48 bytes: every maker below lays them out at the block's start


class Pair(ctypes.Structure):
    _fields_ = [("left", ctypes.c_uint32), ("right", ctypes.c_uint32)]


class Record(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char * 48), ("count", ctypes.c_uint64)]


class TextHolder(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char_p)]


class SlottedRecord(ctypes.Structure):
    __slots__ = ()  # no __dict__, no weak references
    _fields_ = [("text", ctypes.c_char * 48)]


class SlottedWord(ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "Q"
    __slots__ = ("__weakref__",)  # weak references, no __dict__


class BareWord(ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "Q"
    __slots__ = ()  # neither


@pytest.fixture
def alloc() -> Iterator[pyslab.SlabAllocator]:
    """A dict-lookup allocator, validated and closed afterwards."""
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        yield allocator
        gc.collect()
        allocator.validate()


@pytest.fixture
def gc_off() -> Iterator[None]:
    """Collections happen only where the test asks for them."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


# --- what is made, and what is derived from it ---------------------------------------------------

MAKERS: dict[str, Callable[[pyslab.interop.SlabBuffers], Any]] = {
    "string buffer": lambda made: made.create_string_buffer(PATTERN, 56),
    "unicode buffer": lambda made: made.create_unicode_buffer(PATTERN.decode() + "\0" * 4),
    "new(Structure)": lambda made: made.new(Record, PATTERN, 7),
    "new(array)": lambda made: made.new(ctypes.c_char * 56, *PATTERN),
    "new(array of Structure)": lambda made: made.new(
        Pair * 7, *((int.from_bytes(PATTERN[i : i + 4], "little"),
                     int.from_bytes(PATTERN[i + 4 : i + 8], "little")) for i in range(0, 48, 8))
    ),
}
"""How the slab-backed object is made; each one starts with ``PATTERN`` in its block (the
unicode buffer holds it as ``wchar_t``: its first 48 bytes are what they are, and checked)."""


def _sole_cycle(obj: Any) -> object:
    holder: list[object] = [obj]
    holder.append(holder)
    return holder


DERIVATIONS: dict[str, Callable[[Any], object]] = {
    "memoryview": memoryview,
    "memoryview cast": lambda obj: memoryview(obj).cast("B"),
    "memoryview cast to words": lambda obj: memoryview(obj).cast("B").cast("I"),
    "slice of a memoryview cast": lambda obj: memoryview(obj).cast("B")[4:12],
    "slice of a slice": lambda obj: memoryview(obj).cast("B")[2:40][3:9],
    "pointer": ctypes.pointer,
    "pointer to pointer": lambda obj: ctypes.pointer(ctypes.pointer(obj)),
    "cast of a pointer": lambda obj: ctypes.cast(
        ctypes.pointer(obj), ctypes.POINTER(ctypes.c_uint32)
    ),
    "byref": ctypes.byref,
    "byref with offset": lambda obj: ctypes.byref(obj, 8),
    "from_buffer": lambda obj: (ctypes.c_uint8 * 8).from_buffer(obj),
    "from_buffer with offset": lambda obj: ctypes.c_uint32.from_buffer(obj, 4),
    "element of a from_buffer array of structures": lambda obj: (Pair * 4).from_buffer(obj)[2],
    "reference cycle": _sole_cycle,
}
"""Derivations that work on every ctypes object of MAKERS."""

ARRAY_DERIVATIONS: dict[str, Callable[[Any], object]] = {
    "cast to POINTER(c_char)": lambda obj: ctypes.cast(obj, ctypes.POINTER(ctypes.c_char)),
    "cast to POINTER(c_uint32)": lambda obj: ctypes.cast(obj, ctypes.POINTER(ctypes.c_uint32)),
    "cast to c_void_p": lambda obj: ctypes.cast(obj, ctypes.c_void_p),
    "cast to c_char_p": lambda obj: ctypes.cast(obj, ctypes.c_char_p),
    "structure field": lambda obj: TextHolder(ctypes.cast(obj, ctypes.c_char_p)),
    "memoryview slice": lambda obj: memoryview(obj)[1:5],
}
"""Derivations of arrays (buffers and ``new`` arrays): ``cast`` takes arrays and pointers."""


def derivations_of(maker: str) -> dict[str, Callable[[Any], object]]:
    """Every derivation that applies to what ``maker`` makes."""
    found = dict(DERIVATIONS)
    if maker != "new(Structure)":
        found.update(ARRAY_DERIVATIONS)
    if maker == "new(array of Structure)":
        found["element (its _b_base_ is the array)"] = lambda obj: obj[3]
    return found


CASES = [
    (maker, name, derive) for maker in MAKERS for name, derive in derivations_of(maker).items()
]


def _churn(made: pyslab.interop.SlabBuffers, size: int) -> list[Any]:
    """Buffers of the size class of ``size`` bytes, each filled with 0xee: a freed slot of
    that class would be taken by one of them and overwritten."""
    return [made.create_string_buffer(b"\xee" * (size - 1), size) for _ in range(4)]


@pytest.mark.parametrize(
    ("maker", "derive"),
    [(maker, derive) for maker, _, derive in CASES],
    ids=[f"{maker}-{name}" for maker, name, _ in CASES],
)
def test_the_block_lives_exactly_as_long_as_anything_derived_from_it(
    alloc: pyslab.SlabAllocator, maker: str, derive: Callable[[Any], object], gc_off: None
) -> None:
    made = pyslab.buffers(alloc)
    obj = MAKERS[maker](made)
    address, size = ctypes.addressof(obj), ctypes.sizeof(obj)
    before = ctypes.string_at(address, 48)
    assert maker == "unicode buffer" or before == PATTERN
    baseline = alloc.stats().live_blocks - 1
    derived = derive(obj)
    del obj
    gc.collect()
    assert alloc.owns(address)
    others = _churn(made, size)
    assert ctypes.string_at(address, 48) == before
    assert alloc.stats().live_blocks == baseline + 1 + len(others)
    del derived
    gc.collect()
    assert not alloc.owns(address)
    assert alloc.stats().live_blocks == baseline + len(others)
    del others
    assert alloc.stats().live_blocks == baseline


def test_an_array_element_keeps_the_whole_array(alloc: pyslab.SlabAllocator, gc_off: None) -> None:
    pairs = pyslab.buffers(alloc).new(Pair * 10, *((i, -i & 0xFFFFFFFF) for i in range(10)))
    address = ctypes.addressof(pairs)
    third = pairs[3]
    assert third._b_base_ is pairs  # type: ignore[comparison-overlap]
    del pairs
    gc.collect()
    assert alloc.owns(address) and (third.left, third.right) == (3, 0xFFFFFFFD)
    del third
    assert not alloc.owns(address)


def test_no_derived_object_is_needed_for_the_block_to_go(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    made = pyslab.buffers(alloc)
    start = live_objects()
    for maker in MAKERS.values():
        obj = maker(made)
        address = ctypes.addressof(obj)
        assert live_objects() == start + 1
        del obj  # reference counting alone: no collection
        assert not alloc.owns(address)
    assert alloc.stats().live_blocks == 0 and live_objects() == start


# --- collections: finalizers, resurrection -------------------------------------------------------


class Finalized:
    """In a reference cycle with a slab-backed object; its finalizer reads the object's bytes
    while the collector is tearing the cycle down."""

    seen: ClassVar[list[tuple[bytes, bool]]] = []
    resurrected: ClassVar[list[Any]] = []

    def __init__(self, obj: Any, heap: pyslab.SlabAllocator, resurrect: bool = False) -> None:
        self.obj, self.heap, self.resurrect = obj, heap, resurrect
        self.itself = self

    def __del__(self) -> None:
        address = ctypes.addressof(self.obj)
        Finalized.seen.append((ctypes.string_at(address, 48), self.heap.owns(address)))
        if self.resurrect:
            Finalized.resurrected.append(self.obj)


@pytest.fixture
def finalized() -> Iterator[type[Finalized]]:
    Finalized.seen.clear()
    Finalized.resurrected.clear()
    yield Finalized
    Finalized.seen.clear()
    Finalized.resurrected.clear()


@pytest.mark.parametrize("maker", list(MAKERS))
def test_a_finalizer_in_the_same_cycle_reads_the_live_block(
    alloc: pyslab.SlabAllocator, maker: str, gc_off: None, finalized: type[Finalized]
) -> None:
    made = pyslab.buffers(alloc)
    anchor = MAKERS[maker](made)  # keeps the slab mapped, were the block freed too early
    obj = MAKERS[maker](made)
    address = ctypes.addressof(obj)
    before = ctypes.string_at(address, 48)
    finalized(obj, alloc)
    del obj
    gc.collect()
    # The collector ran the finalizer before tearing the object down: the block was live.
    assert finalized.seen == [(before, True)]
    assert not alloc.owns(address)  # freed by the time the collection ended
    del anchor
    assert alloc.stats().live_blocks == 0


def test_a_resurrected_buffer_keeps_its_block_until_it_dies_again(
    alloc: pyslab.SlabAllocator, gc_off: None, finalized: type[Finalized]
) -> None:
    made = pyslab.buffers(alloc)
    start = live_objects()
    buf = made.create_string_buffer(PATTERN)
    address = ctypes.addressof(buf)
    finalized(buf, alloc, resurrect=True)
    del buf
    gc.collect()
    assert finalized.seen == [(PATTERN, True)]
    assert alloc.owns(address)  # the finalizer brought it back: its block stays
    others = _churn(made, 49)
    assert finalized.resurrected[0].value == PATTERN
    del others
    finalized.resurrected.clear()  # dies again (reference counting), its keeper unreferenced
    gc.collect()  # every collection looks again at the keepers of resurrected objects
    assert not alloc.owns(address)
    assert alloc.stats().live_blocks == 0 and live_objects() == start


def test_buffers_collected_in_a_cycle_with_finalizers_are_freed_once(
    alloc: pyslab.SlabAllocator, gc_off: None, finalized: type[Finalized]
) -> None:
    made = pyslab.buffers(alloc)
    for i in range(200):
        finalized(made.create_string_buffer(PATTERN, 50 + i % 100), alloc)
    assert alloc.stats().live_blocks == 200
    gc.collect()
    assert len(finalized.seen) == 200 and all(seen == (PATTERN, True) for seen in finalized.seen)
    assert alloc.stats().live_blocks == 0 and not alloc.deferred_errors


class Dropper:
    """In a reference cycle; its finalizer drops the last reference to buffers outside it."""

    def __init__(self, victims: list[Any]) -> None:
        self.victims = victims
        self.itself = self

    def __del__(self) -> None:
        self.victims.clear()  # they die by reference counting, in the middle of a collection


def test_buffers_dying_by_reference_counting_during_a_collection_are_freed_once_at_its_end(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    made = pyslab.buffers(alloc)
    victims = [made.create_string_buffer(PATTERN) for _ in range(20)]
    addresses = [ctypes.addressof(buf) for buf in victims]
    Dropper(victims)  # garbage; the list it clears is not (this frame holds it)
    gc.collect()
    assert victims == []
    assert not any(alloc.owns(address) for address in addresses)
    assert alloc.stats().live_blocks == 0 and not alloc.deferred_errors


# --- what the keeper shows, and copies ----------------------------------------------------------


def test_a_buffer_shows_its_keeper_and_a_deep_copy_does_not_free_twice(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    buf = pyslab.buffers(alloc).create_string_buffer(PATTERN)
    address = ctypes.addressof(buf)
    assert list(vars(buf)) == ["_pyslab_block"]
    deep = copy.deepcopy(buf)
    assert deep.raw == buf.raw and ctypes.addressof(deep) != address
    assert vars(deep) == {"_pyslab_block": None} and not alloc.owns(ctypes.addressof(deep))
    del buf
    assert not alloc.owns(address)
    del deep
    assert alloc.stats().live_blocks == 0 and not alloc.deferred_errors


def test_a_shallow_copy_of_a_buffer_holds_its_block_until_it_dies(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    buf = pyslab.buffers(alloc).create_string_buffer(PATTERN)
    address = ctypes.addressof(buf)
    shallow = copy.copy(buf)  # copies the instance __dict__, keeper included
    assert shallow.raw == buf.raw and ctypes.addressof(shallow) != address
    del buf
    assert alloc.owns(address)
    del shallow
    assert not alloc.owns(address) and not alloc.deferred_errors


def test_new_structures_copy_and_pickle_as_ctypes_own(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    record = pyslab.buffers(alloc).new(Record, PATTERN, 7)
    address = ctypes.addressof(record)
    assert vars(record) == {}
    for twin in (copy.copy(record), copy.deepcopy(record), pickle.loads(pickle.dumps(record))):
        assert type(twin) is Record and bytes(twin) == bytes(record) and vars(twin) == {}
        assert ctypes.addressof(twin) != address
    del twin
    del record
    assert alloc.stats().live_blocks == 0 and not alloc.deferred_errors


@pytest.mark.parametrize("ctype", [SlottedRecord, SlottedWord])
def test_new_places_types_without_a_dict(
    alloc: pyslab.SlabAllocator, ctype: type[ctypes.Structure] | type[SlottedWord],
    gc_off: None,
) -> None:
    obj = pyslab.buffers(alloc).new(ctype)
    address = ctypes.addressof(obj)
    view = memoryview(obj)
    del obj
    assert alloc.owns(address)
    del view
    assert not alloc.owns(address)


def test_new_refuses_a_simple_type_with_neither_dict_nor_weak_references(
    alloc: pyslab.SlabAllocator,
) -> None:
    start = live_objects()
    with pytest.raises(TypeError, match=r"BareWord.*no __dict__ and take no weak references"):
        pyslab.buffers(alloc).new(BareWord, 5)
    assert alloc.stats().live_blocks == 0 and live_objects() == start


# --- adopt ---------------------------------------------------------------------------------------


class WeakOnly:
    __slots__ = ("__weakref__",)


class Neither:
    __slots__ = ()


def test_adopt_ties_a_block_to_owners_with_or_without_a_dict(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    made = pyslab.buffers(alloc)
    start = live_objects()
    owners: list[Callable[[int], object]] = [
        lambda address: (ctypes.c_char * 32).from_address(address), lambda _: WeakOnly(),
    ]
    for make_owner in owners:
        address = alloc.alloc(32)
        owner = make_owner(address)
        made.adopt(owner, address)
        assert alloc.owns(address) and live_objects() == start + 1
        del owner
        assert not alloc.owns(address) and live_objects() == start


def test_adopt_refusing_an_owner_records_nothing(alloc: pyslab.SlabAllocator) -> None:
    address = alloc.alloc(32)
    start = live_objects()
    with pytest.raises(TypeError):
        pyslab.buffers(alloc).adopt(Neither(), address)
    gc.collect()
    assert alloc.owns(address) and live_objects() == start  # still the caller's to free
    alloc.free(address)


def test_a_weakly_adopted_owner_in_a_cycle_is_freed_at_the_end_of_the_collection(
    alloc: pyslab.SlabAllocator, gc_off: None
) -> None:
    class Owner:
        __slots__ = ("__weakref__", "me")

        me: object

    address = alloc.alloc(32)
    owner = Owner()
    owner.me = owner
    pyslab.buffers(alloc).adopt(owner, address)
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None and not alloc.owns(address)


# --- after close() -------------------------------------------------------------------------------


def test_derived_objects_read_their_bytes_after_close_and_unmap_when_they_go() -> None:
    # In a child: were a block released under a derived object, reading it would crash.
    code = textwrap.dedent("""
        import ctypes, gc
        import pyslab
        from tests.support import is_mapped
        from tests.test_buffer_lifetime import MAKERS, PATTERN, derivations_of

        heap = pyslab.SlabAllocator()
        made = pyslab.buffers(heap)
        kept, bases = [], set()
        for name, maker in MAKERS.items():
            for derive in derivations_of(name).values():
                obj = maker(made)
                bases.add(ctypes.addressof(obj) & -4096)
                kept.append((ctypes.addressof(obj), ctypes.string_at(ctypes.addressof(obj), 48),
                             derive(obj)))
                del obj
        large = made.create_string_buffer(PATTERN, 1 << 20)  # a block libc maps on its own
        view = memoryview(large).cast("B")[100:116]
        big = ctypes.addressof(large)
        del large
        heap.close()
        gc.collect()
        print(all(ctypes.string_at(address, 48) == before for address, before, _ in kept),
              bytes(view) == bytes(16), all(map(is_mapped, bases)), is_mapped(big))
        del kept, view
        gc.collect()
        print(any(map(is_mapped, bases)), is_mapped(big), heap.stats().mapped_bytes,
              pyslab.interop.live_objects())
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "True", "False", "False", "0", "0"]


def test_a_finalizer_reading_a_large_buffer_in_a_collected_cycle_does_not_crash() -> None:
    # A large block goes back to libc, which unmaps it at once: a free before the finalizer
    # ran would make the read below a segmentation fault.
    code = textwrap.dedent("""
        import ctypes, gc
        import pyslab

        heap = pyslab.SlabAllocator()

        class Node:
            def __del__(self):
                print(self.buf.raw[:8], heap.owns(ctypes.addressof(self.buf)))

        node = Node()
        node.buf = pyslab.buffers(heap).create_string_buffer(b"pattern!", 1 << 20)
        node.me = node
        del node
        gc.collect()
        print(heap.stats().large_blocks)
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stderr}"
    assert done.stdout.split() == ["b'pattern!'", "True", "0"]

"""The pieces the core shares with the policies and the heap map, on real allocators.

``SlabIndex`` (the ``{slab base: slab}`` index of ``dict-lookup``, ``thread-cache``, ``debug``
and ``address-mask``'s fallback) and the checked free-list walk
(``MemorySlab.free_list_fault`` / ``checked_free_list``, used by ``validate()``, by
``pyslab.observe.heap_map`` and by the ``debug`` policy's ``check``).
"""

from __future__ import annotations

import ctypes
import pickle
from collections.abc import Callable, Iterator

import pytest

import pyslab
import pyslab.observe
from pyslab.core import (
    WORD_SHIFT,
    WORDS,
    FreeListCorruptionError,
    MemorySlab,
    SizeClass,
    SlabIndex,
)
from pyslab.policy import Heap


class Indexed(pyslab.Policy):
    """A plugin keeping its own index, as the built-in ones do, checked by ``validate()``."""

    name = "indexed"

    def bind(self, heap: Heap) -> None:
        super().bind(heap)
        self.index = SlabIndex(heap.slab_size)

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        self.index.add(slab)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        self.index.remove(slab)

    def check(self) -> None:
        self.index.check(self.heap.size_classes, "the test's index")


def _agrees(heap: pyslab.SlabAllocator, index: SlabIndex) -> None:
    slabs = heap.slabs()
    assert len(index) == len(slabs) and set(index) == set(slabs)
    for slab in slabs:
        assert slab in index
        for address in (slab.base, slab.first, slab.base + heap.slab_size - 1):
            assert index.owner(address) is slab
    index.check(heap.size_classes)


# --- SlabIndex --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy", ["dict-lookup", "thread-cache", "debug", "thread-cache+debug", "address-mask"]
)
def test_the_index_agrees_with_the_heap_across_alloc_free_and_reclaim(policy: str) -> None:
    indexed = Indexed()
    with pyslab.SlabAllocator(policy=[*policy.split("+"), "reclaim", indexed]) as heap:
        _agrees(heap, indexed.index)
        blocks = [heap.alloc(size) for size in (8, 64, 200, 1024) for _ in range(150)]
        _agrees(heap, indexed.index)
        made = len(heap.slabs())
        for address in blocks[::2]:
            heap.free(address)
        heap.validate()  # runs every policy's check(), the index checks among them
        _agrees(heap, indexed.index)
        for address in blocks[1::2]:
            heap.free(address)
        heap.shrink()  # empty slabs go back to the page source: slab_removed for each
        assert len(heap.slabs()) < made
        _agrees(heap, indexed.index)
        heap.validate()
        again = [heap.alloc(64) for _ in range(100)]
        _agrees(heap, indexed.index)
        for address in again:
            heap.free(address)
        heap.validate()


def test_the_index_of_a_policy_bound_to_a_live_allocator_holds_its_slabs() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as heap:
        blocks = [heap.alloc(32) for _ in range(300)]
        indexed = Indexed()
        heap.set_policy(["dict-lookup", indexed])  # existing slabs announced through slab_added
        _agrees(heap, indexed.index)
        heap.validate()
        for address in blocks:
            heap.free(address)


def test_owner_of_an_address_in_no_slab_is_none() -> None:
    indexed = Indexed()
    with pyslab.SlabAllocator(policy=["reclaim", indexed]) as heap:
        index = indexed.index
        large = heap.alloc(100_000)  # the system fallback: in no slab
        blocks = [heap.alloc(1024) for _ in range(8)]  # two slabs of four
        released = next(s for s in heap.slabs() if s.contains(blocks[0]))
        for address in blocks[:4]:
            heap.free(address)
        heap.shrink()
        assert released not in heap.slabs()
        slabs = heap.slabs()
        for address in (0, 1, -1, large, released.base, released.first + 5, id(object()), 1 << 70):
            if not any(s.contains(address) for s in slabs):
                assert index.owner(address) is None
        assert released not in index
        assert index.owner(blocks[5]) is next(s for s in slabs if s.contains(blocks[5]))
        for address in (large, *blocks[4:]):
            heap.free(address)


def test_check_names_the_slab_the_index_disagrees_on() -> None:
    indexed = Indexed()
    with pyslab.SlabAllocator(policy=["reclaim", indexed]) as heap:
        index = indexed.index
        blocks = [heap.alloc(512) for _ in range(9)]  # two full slabs and one more
        gone = next(s for s in heap.slabs() if s.contains(blocks[0]))
        kept = next(s for s in heap.slabs() if s.contains(blocks[8]))
        for address in blocks[:8]:
            heap.free(address)
        heap.shrink()
        assert gone not in heap.slabs()
        index.remove(kept)
        with pytest.raises(pyslab.CorruptionError, match=f"the test's index .*{kept.base:#x}"):
            heap.validate()
        index.add(kept)
        heap.validate()
        index.add(gone)  # a slab that went back to the page source
        with pytest.raises(pyslab.CorruptionError, match=r"holds 2 slabs .* list 1"):
            index.check(heap.size_classes)
        index.remove(gone)
        heap.validate()
        heap.free(blocks[8])


def test_add_and_remove_refuse_what_would_break_the_index() -> None:
    with pyslab.SlabAllocator() as heap:
        address = heap.alloc(64)
        slab = heap.slabs()[0]
        index = SlabIndex(heap.slab_size)
        index.add(slab)
        with pytest.raises(ValueError, match="already indexed"):
            index.add(slab)
        # A slab object is plain data: one at a misaligned base reads no memory.
        stray = MemorySlab(slab.size_class, slab.base + 64, 0, heap.slab_size, serial=10**6)
        with pytest.raises(ValueError, match="not aligned"):
            index.add(stray)
        with pytest.raises(KeyError):
            index.remove(stray)
        assert len(index) == 1 and list(index) == [slab]
        index.clear()
        assert len(index) == 0 and index.owner(address) is None
        heap.free(address)
    for bad in (0, 3000, -4096):
        with pytest.raises(ValueError):
            SlabIndex(bad)
    with pytest.raises(TypeError):
        SlabIndex(4096.0)  # type: ignore[arg-type]


# --- the checked free-list walk ---------------------------------------------------------------


def _word(address: int) -> int:
    return WORDS[address >> WORD_SHIFT]


def _set_word(address: int, value: int) -> None:
    WORDS[address >> WORD_SHIFT] = value


@pytest.fixture
def listed() -> Iterator[tuple[pyslab.SlabAllocator, MemorySlab, list[int]]]:
    """A debug heap with one 64-byte slab whose free list is b[7] -> b[5] -> b[3] -> b[1]."""
    debug = pyslab.make_policy("debug", redzones=False)  # blocks at slot starts
    with pyslab.SlabAllocator(policy=["dict-lookup", debug]) as heap:
        blocks = [heap.alloc(64) for _ in range(10)]
        for address in blocks[1:8:2]:
            heap.free(address)
        slab = next(s for s in heap.slabs() if s.contains(blocks[0]))
        assert list(slab.checked_free_list()) == list(slab.free_list()) == blocks[7:0:-2]
        yield heap, slab, blocks
        heap.validate()
        for address in blocks:
            if address not in blocks[1:8:2]:
                heap.free(address)


# The value written into b[5]'s slot (which should hold b[3]), and why it cannot be followed.
CORRUPTIONS: dict[str, tuple[Callable[[MemorySlab, list[int]], int], str]] = {
    "unmapped": (lambda slab, b: 0x10, "outside the slots of the slab"),
    "far outside": (lambda slab, b: b[5] + 4096 * 64, "outside the slots of the slab"),
    "misaligned": (lambda slab, b: b[3] + 3, "not at a slot start (misaligned)"),
    "a live block": (lambda slab, b: b[2], "a live block"),
    "never handed out": (lambda slab, b: slab.bump, "a slot never handed out"),
    "back to the head": (lambda slab, b: b[7], "a slot already on the list (a cycle)"),
    "itself": (lambda slab, b: b[5], "a slot already on the list (a cycle)"),
    "cut short": (lambda slab, b: 0, "the end of the list after 2 nodes, yet 4 carved"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_free_list_is_reported_by_validate_heap_map_and_debug_naming_the_slab(
    listed: tuple[pyslab.SlabAllocator, MemorySlab, list[int]], corruption: str
) -> None:
    heap, slab, blocks = listed
    value, reason = CORRUPTIONS[corruption]
    bad = value(slab, blocks)
    debug = heap.policy.policies[-1]
    assert debug.name == "debug"
    saved = _word(blocks[5])
    _set_word(blocks[5], bad)  # a write after free over the next pointer
    try:
        holds = f"in the free slot at {blocks[5]:#x} holds {bad:#x}, {reason}"
        with pytest.raises(pyslab.CorruptionError) as validated:
            heap.validate()
        with pytest.raises(pyslab.CorruptionError) as mapped:
            pyslab.observe.heap_map(heap)
        for caught in (validated, mapped):
            assert str(caught.value).startswith(f"{slab!r}: the free-list pointer {holds}")
        with pytest.raises(pyslab.CorruptionError, match="corrupted free-list pointer") as found:
            debug.check()
        message = str(found.value)
        assert f"64-byte slot at {blocks[5]:#x} (offset 0) of {slab!r}" in message
        assert f"it holds {bad:#x}" in message
        assert f"the block freed there was at {blocks[5]:#x}" in message  # debug's own note
    finally:
        _set_word(blocks[5], saved)
    heap.validate()  # nothing was changed by the reports
    assert list(slab.checked_free_list()) == blocks[7:0:-2]


def test_the_fault_names_each_kind_of_pointer(
    listed: tuple[pyslab.SlabAllocator, MemorySlab, list[int]],
) -> None:
    _, slab, b = listed
    seen = {b[7], b[5]}
    assert slab.free_list_fault(b[3], seen) is None
    assert slab.free_list_fault(slab.free) is None
    for corruption, (value, reason) in CORRUPTIONS.items():
        fault = slab.free_list_fault(value(slab, b), seen)
        assert fault is not None and fault.startswith(reason), (corruption, fault)
    assert slab.free_list_fault(0, {b[7], b[5], b[3], b[1]}) is None  # the list ends in time
    assert "after 5 nodes, yet 4" in str(slab.free_list_fault(0, {*b[7:0:-2], b[0]}))


def test_a_cycle_through_every_slot_of_an_empty_slab_is_caught() -> None:
    # An empty, fully carved slab whose list never ends: as many distinct nodes as slots, so a
    # walk that only stops after ``capacity`` nodes would see nothing wrong. The pointer after
    # the last node must be 0, and is checked.
    with pyslab.SlabAllocator(policy="dict-lookup") as heap:
        blocks = [heap.alloc(1024) for _ in range(4)]
        for address in blocks:
            heap.free(address)
        slab = heap.slabs()[0]
        assert slab.used == 0 and slab.bump == slab.end and slab.capacity == 4
        tail = list(slab.free_list())[-1]
        _set_word(tail, slab.free)
        try:
            assert len(list(slab.free_list())) == 4  # the bounded walk stops, none the wiser
            with pytest.raises(FreeListCorruptionError, match="a cycle") as caught:
                heap.validate()
            error = caught.value
            assert (error.slab, error.holder, error.node) == (slab, tail, slab.free)
            with pytest.raises(pyslab.CorruptionError, match="a cycle"):
                pyslab.observe.heap_map(heap)
        finally:
            _set_word(tail, 0)
        heap.validate()


def test_a_free_list_error_keeps_its_message_across_a_process_boundary(
    listed: tuple[pyslab.SlabAllocator, MemorySlab, list[int]],
) -> None:
    _, slab, blocks = listed
    error = FreeListCorruptionError(slab, blocks[5], 0x10, "outside the slots")
    copied = pickle.loads(pickle.dumps(error))
    assert isinstance(copied, pyslab.CorruptionError) and str(copied) == str(error)


def test_the_heap_map_of_a_sound_heap_lists_the_free_list_in_order(
    listed: tuple[pyslab.SlabAllocator, MemorySlab, list[int]],
) -> None:
    heap, slab, blocks = listed
    slab_map = next(s for s in pyslab.observe.heap_map(heap).slabs if s.serial == slab.serial)
    assert slab_map.free_list_addresses() == tuple(blocks[7:0:-2])
    assert ctypes.c_size_t.from_address(blocks[7]).value == blocks[5]  # as C reads it

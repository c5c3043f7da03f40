"""heap_map(): a snapshot that agrees with the allocator's own state, and its text rendering."""

from __future__ import annotations

import ctypes
import random
import threading

import pytest

import pyslab
import pyslab.core
import pyslab.observe
from pyslab.observe import SlabMap, SlotState, heap_map

LIVE, FREE, UNCARVED = SlotState.LIVE, SlotState.FREE, SlotState.UNCARVED


def _walk_with_ctypes(head: int) -> list[int]:
    """The free list as C sees it: follow FreeNode.next from the head until NULL."""
    nodes = []
    node = head
    while node:
        nodes.append(node)
        node = ctypes.cast(node, ctypes.POINTER(pyslab.FreeNode)).contents.next or 0
    return nodes


def _fragment(allocator: pyslab.SlabAllocator, seed: int = 7) -> set[int]:
    """Allocate blocks of every class, free a random half; return the live addresses."""
    rng = random.Random(seed)
    blocks = [allocator.alloc(rng.choice([8, 16, 30, 64, 100, 250, 500, 1000])) for _ in range(900)]
    rng.shuffle(blocks)
    for address in blocks[:450]:
        allocator.free(address)
    return set(blocks[450:])


def test_snapshot_counts_agree_with_stats_per_class_and_per_slab(
    allocator: pyslab.SlabAllocator,
) -> None:
    live = _fragment(allocator)
    heap = heap_map(allocator)
    stats = allocator.stats()
    assert heap.policy == stats.policy and heap.slab_size == stats.slab_size
    assert [c.slot_size for c in heap.classes] == [c.slot_size for c in stats.classes]
    for class_map, class_stats in zip(heap.classes, stats.classes, strict=True):
        assert len(class_map.slabs) == class_stats.slabs
        assert class_map.capacity == class_stats.total_slots
        assert class_map.used == class_stats.used_slots
        assert class_map.free == class_stats.free_slots
        assert class_map.count(pyslab.core.SlabState.EMPTY) == class_stats.empty_slabs
    assert heap.used == len(live) == sum(c.used_slots for c in stats.classes)
    assert heap.mapped_bytes == stats.mapped_bytes
    slabs = allocator.slabs()
    assert [s.serial for s in heap.slabs] == [s.serial for s in slabs]
    for slab_map, slab in zip(heap.slabs, slabs, strict=True):
        assert (slab_map.base, slab_map.first, slab_map.capacity, slab_map.used) == (
            slab.base, slab.first, slab.capacity, slab.used)
        assert slab_map.state is slab.state
        assert slab_map.uncarved == (slab.end - slab.bump) // slab.slot_size
        assert slab_map.current == (slab is slab.size_class.current)
    allocator.validate()
    for address in live:
        allocator.free(address)


def test_free_list_order_is_the_order_of_the_next_pointers_in_memory(
    allocator: pyslab.SlabAllocator,
) -> None:
    live = _fragment(allocator, seed=11)
    heap = heap_map(allocator)
    for slab_map, slab in zip(heap.slabs, allocator.slabs(), strict=True):
        assert list(slab_map.free_list_addresses()) == _walk_with_ctypes(slab.free)
        assert slab_map.linked == len(slab_map.free_list)
    assert any(len(s.free_list) > 1 for s in heap.slabs)  # the comparison had something to do
    allocator.validate()
    for address in live:
        allocator.free(address)


def test_each_slot_state_matches_what_the_program_did(allocator: pyslab.SlabAllocator) -> None:
    blocks = [allocator.alloc(64) for _ in range(40)]
    freed = blocks[3:30:4]
    for address in freed:
        allocator.free(address)
    (slab_map,) = heap_map(allocator).size_class(64).slabs
    states = {slab_map.address(i): state for i, state in enumerate(slab_map.slots)}
    assert {a for a, s in states.items() if s is LIVE} == set(blocks) - set(freed)
    assert {a for a, s in states.items() if s is FREE} == set(freed)
    # LIFO: the head is the slot freed last; slots 40..63 were never handed out.
    assert slab_map.free_list_addresses() == tuple(reversed(freed))
    assert slab_map.slots[40:] == (UNCARVED,) * 24 and slab_map.uncarved == 24
    allocator.validate()
    for address in set(blocks) - set(freed):
        allocator.free(address)


def test_colored_slabs_map_slot_indices_past_the_color_offset() -> None:
    # 192-byte slots leave 64 bytes of slack in a 4 KiB slab: colors 0 and 64 alternate.
    with pyslab.SlabAllocator(size_classes=(64, 192), policy="coloring") as allocator:
        blocks = [allocator.alloc(150) for _ in range(2 * 21)]
        for address in blocks[1::2]:
            allocator.free(address)
        heap = heap_map(allocator)
        slabs = heap.size_class(192).slabs
        assert {s.first - s.base for s in slabs} == {0, 64}
        for slab_map in slabs:
            live = {slab_map.address(i) for i, s in enumerate(slab_map.slots) if s is LIVE}
            assert live == {a for a in blocks[0::2] if slab_map.base <= a < slab_map.base + 4096}
        allocator.validate()


def test_a_snapshot_is_frozen_and_does_not_follow_the_heap(
    allocator: pyslab.SlabAllocator,
) -> None:
    first = allocator.alloc(16)
    before = heap_map(allocator)
    second = allocator.alloc(16)
    assert heap_map(allocator) != before
    assert before.size_class(16).used == 1
    with pytest.raises(AttributeError):
        before.policy = "other"  # type: ignore[misc]
    allocator.free(first)
    allocator.free(second)
    allocator.validate()


def test_released_slabs_leave_the_map_and_keep_their_serials_counted() -> None:
    with pyslab.SlabAllocator(policy="reclaim(keep=1)") as allocator:
        blocks = [allocator.alloc(1024) for _ in range(12)]  # three slabs of 4 slots
        for address in blocks[:8]:
            allocator.free(address)  # slab 0 kept as the one cached empty, slab 1 released
        heap = heap_map(allocator)
        assert [s.serial for s in heap.size_class(1024).slabs] == [0, 2]
        assert heap.slabs_made == 3
        allocator.validate()


def test_snapshots_taken_while_threads_allocate_are_each_consistent() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup+reclaim") as allocator:
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[int] = []
            try:
                while not stop.is_set():
                    if mine and rng.random() < 0.5:
                        allocator.free(mine.pop(rng.randrange(len(mine))))
                    else:
                        mine.append(allocator.alloc(rng.choice([8, 48, 200, 700])))
                for address in mine:
                    allocator.free(address)
            except BaseException as error:  # reported to the main thread
                errors.append(error)

        threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(30):
                heap = heap_map(allocator)  # raises CorruptionError on a torn view
                for class_map in heap.classes:
                    assert class_map.used == sum(s.used for s in class_map.slabs)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert errors == []
        allocator.validate()


# --- bad input and corruption --------------------------------------------------------------


def test_heap_map_of_a_closed_allocator_raises() -> None:
    allocator = pyslab.SlabAllocator()
    allocator.close()
    with pytest.raises(pyslab.AllocatorClosedError, match="heap_map"):
        heap_map(allocator)


def test_heap_map_from_inside_a_policy_hook_is_refused() -> None:
    seen: list[BaseException] = []

    class Peek(pyslab.Policy):
        name = "peek"

        def block_allocated(self, slab: pyslab.core.MemorySlab, address: int, size: int) -> None:
            try:
                heap_map(owner)
            except pyslab.PyslabError as error:
                seen.append(error)

    with pyslab.SlabAllocator(policy=Peek()) as owner:
        owner.free(owner.alloc(8))
        owner.validate()
    assert len(seen) == 1 and "inside another allocator call" in str(seen[0])


def test_a_corrupted_next_pointer_is_reported_not_followed(
    allocator: pyslab.SlabAllocator,
) -> None:
    blocks = [allocator.alloc(32) for _ in range(8)]
    allocator.free(blocks[2])
    allocator.free(blocks[5])  # head: blocks[5] -> blocks[2] -> NULL
    node = ctypes.cast(blocks[5], ctypes.POINTER(pyslab.FreeNode)).contents
    saved = node.next
    node.next = blocks[5] + 4096 * 64  # far outside the slab
    try:
        with pytest.raises(pyslab.CorruptionError, match=f"{blocks[5] + 4096 * 64:#x}"):
            heap_map(allocator)
    finally:
        node.next = saved
    allocator.validate()
    for address in blocks:
        if address not in (blocks[2], blocks[5]):
            allocator.free(address)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"width": 4}, ValueError, "width must be at least 8, not 4"),
        ({"width": "wide"}, TypeError, "'wide'"),
        ({"max_slabs": 1}, ValueError, "max_slabs must be at least 2, not 1"),
        ({"max_slabs": 2.5}, TypeError, "2.5"),
    ],
)
def test_to_text_rejects_bad_options(options: dict[str, object], error: type[Exception],
                                     match: str) -> None:
    with pyslab.SlabAllocator() as allocator:
        heap = heap_map(allocator)
        with pytest.raises(error, match=match):
            heap.to_text(**options)  # type: ignore[arg-type]


def test_lookups_name_the_missing_value() -> None:
    with pyslab.SlabAllocator() as allocator:
        allocator.alloc(1024)
        heap = heap_map(allocator)
        with pytest.raises(KeyError, match="no 48-byte size class"):
            heap.size_class(48)
        with pytest.raises(IndexError, match="slot 4 is not in range"):
            heap.size_class(1024).slabs[0].address(4)
        allocator.validate()


def test_an_inconsistent_slab_map_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="live/free/uncarved"):
        SlabMap(serial=0, slot_size=1024, base=0, first=0, capacity=2, used=2, linked=0,
                       uncarved=0, current=False, slots=(LIVE, FREE), free_list=(1,))
    with pytest.raises(ValueError, match="free list"):
        SlabMap(serial=0, slot_size=1024, base=0, first=0, capacity=2, used=0, linked=2,
                       uncarved=0, current=False, slots=(FREE, FREE), free_list=(1, 1))
    with pytest.raises(ValueError, match="below the bump pointer"):
        SlabMap(serial=0, slot_size=1024, base=0, first=0, capacity=2, used=1, linked=0,
                       uncarved=1, current=False, slots=(UNCARVED, LIVE), free_list=())


# --- text ----------------------------------------------------------------------------------


def test_text_draws_one_line_per_slab_in_the_seeds_style() -> None:
    with pyslab.SlabAllocator(policy="first-fit") as allocator:
        blocks = [allocator.alloc(1000) for _ in range(4)]  # one 1024-byte slab, full
        allocator.free(blocks[1])
        allocator.free(blocks[3])
        half = allocator.alloc(300)  # one 512-byte slab: slot 0 live, 7 never carved
        text = heap_map(allocator).to_text(free_list=True)
        lines = text.splitlines()
        assert lines[0] == (
            "heap map: policy first-fit, 4096-byte slabs, 2 slabs (8 KiB mapped), "
            "3/12 slots live (25%)"
        )
        assert "512-byte class: 1 slab, 1/8 live (12%), 0 on free lists, 7 never carved" in text
        slab_512 = next(line for line in lines if "│█·······│" in line)
        assert slab_512.endswith("1/8  12% partial, current")
        slab_1024 = next(line for line in lines if "│█░█░│" in line)
        assert slab_1024.endswith("2/4  50% partial, current")
        assert lines[lines.index(slab_1024) + 1].strip() == "free list: [3]→[1]"
        assert str(heap_map(allocator)) == heap_map(allocator).to_text()
        ascii_text = heap_map(allocator).to_text(ascii=True, free_list=True)
        assert ascii_text.isascii() and "|#o#o|" in ascii_text and "[3]->[1]" in ascii_text
        for address in (blocks[0], blocks[2], half):
            allocator.free(address)
        allocator.validate()


def test_text_compresses_wide_slabs_and_long_classes() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup+reclaim") as allocator:
        small = [allocator.alloc(8) for _ in range(16)]  # 16 of 512 slots: two full cells
        big = [allocator.alloc(1024) for _ in range(4 * 20)]  # 20 full slabs
        text = heap_map(allocator).to_text(width=64, max_slabs=6)
        assert "1 cell = 8 slots" in text
        line = next(line for line in text.splitlines() if "16/512  " in line)
        assert "│██" + "·" * 62 + "│" in line
        lines_1024 = [line for line in text.splitlines() if "│████│" in line]
        assert len(lines_1024) == 6
        assert "⋮ 14 more slabs: 14 full, 0 partial, 0 empty; 56/56 live (100%)" in text
        for address in small + big:
            allocator.free(address)
        allocator.validate()


def test_text_of_an_empty_heap_says_so() -> None:
    with pyslab.SlabAllocator() as allocator:
        assert heap_map(allocator).to_text().endswith("(no slabs)")

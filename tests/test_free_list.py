"""The free list is real memory: C-layout FreeNode pointers stored in the free slots."""

from __future__ import annotations

import ctypes

import pyslab


def _walk_with_ctypes(head: int) -> list[int]:
    nodes = []
    node = head
    while node:
        nodes.append(node)
        node = ctypes.cast(node, ctypes.POINTER(pyslab.FreeNode)).contents.next or 0
    return nodes


def test_walking_free_node_pointers_finds_exactly_the_free_slots(
    allocator: pyslab.SlabAllocator,
) -> None:
    blocks = [allocator.alloc(32) for _ in range(100)]
    freed = [*blocks[5:60:3], blocks[99], blocks[0]]
    for address in freed:
        allocator.free(address)
    live = set(blocks) - set(freed)
    for slab in allocator.slabs():
        linked = _walk_with_ctypes(slab.free)
        assert linked == list(slab.free_list())
        uncarved = set(range(slab.bump, slab.end, slab.slot_size))
        slots = set(slab.slot_addresses())
        # every slot is exactly one of: live, linked free, uncarved
        assert set(linked) | uncarved | (live & slots) == slots
        assert len(linked) + len(uncarved) + len(live & slots) == len(slots)
    # the list is last in, first out: the head is the last slot freed into that slab
    last_slab = next(s for s in allocator.slabs() if s.contains(blocks[0]))
    assert last_slab.free == blocks[0]
    for address in live:
        allocator.free(address)


def test_a_fresh_slab_links_nothing_and_carves_lazily(allocator: pyslab.SlabAllocator) -> None:
    address = allocator.alloc(64)
    slab = next(s for s in allocator.slabs() if s.contains(address))
    assert slab.free == 0 and slab.bump == slab.first + 64
    assert ctypes.c_uint64.from_address(slab.bump).value == 0  # untouched zero page
    allocator.free(address)


def test_free_node_is_one_pointer() -> None:
    assert ctypes.sizeof(pyslab.FreeNode) == ctypes.sizeof(ctypes.c_void_p)
    assert pyslab.FreeNode.next.offset == 0

"""The allocator's contract: routing, alignment, calloc, realloc, queries, stats, close."""

from __future__ import annotations

import ctypes

import pytest

import pyslab
from tests.support import block_intact, fill_block


def test_small_requests_are_served_by_the_smallest_fitting_class(
    allocator: pyslab.SlabAllocator,
) -> None:
    for size, slot in [(1, 8), (8, 8), (9, 16), (17, 32), (100, 128), (1000, 1024), (1024, 1024)]:
        address = allocator.alloc(size)
        assert allocator.usable_size(address) == slot
        assert any(s.contains(address) for s in allocator.slabs())
        allocator.free(address)


def test_blocks_are_real_writable_memory(allocator: pyslab.SlabAllocator) -> None:
    blocks = [(allocator.alloc(size), size) for size in (8, 24, 200, 1024, 5000)]
    for i, (address, size) in enumerate(blocks):
        fill_block(address, size, i + 1)
    for i, (address, size) in enumerate(blocks):
        assert block_intact(address, size, i + 1)
        allocator.free(address)


def test_large_requests_fall_through_to_libc_and_are_tracked(
    allocator: pyslab.SlabAllocator,
) -> None:
    address = allocator.alloc(100_000)
    assert not any(s.contains(address) for s in allocator.slabs())
    assert allocator.owns(address)
    assert allocator.usable_size(address) == 100_000
    stats = allocator.stats()
    assert (stats.large_blocks, stats.large_bytes) == (1, 100_000)
    allocator.free(address)
    assert allocator.stats().large_blocks == 0
    assert not allocator.owns(address)


@pytest.mark.parametrize("align", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 65536])
def test_every_alignment_is_honoured(allocator: pyslab.SlabAllocator, align: int) -> None:
    addresses = [allocator.alloc(size, align) for size in (1, 8, 40, 700, 3000)]
    for address in addresses:
        assert address % align == 0
        allocator.free(address)


def test_alignment_beyond_every_class_goes_to_libc(allocator: pyslab.SlabAllocator) -> None:
    address = allocator.alloc(8, align=2048)
    assert address % 2048 == 0
    assert allocator.stats().large_blocks == 1
    allocator.free(address)


def test_alignment_picks_a_class_that_gives_it() -> None:
    with pyslab.SlabAllocator(size_classes=(16, 48, 64, 192)) as alloc:
        address = alloc.alloc(20, align=32)
        assert alloc.usable_size(address) == 64  # 48 only guarantees 16
        assert address % 32 == 0
        assert alloc.usable_size(alloc.alloc(20, align=16)) == 48


def test_calloc_zeroes_reused_memory(allocator: pyslab.SlabAllocator) -> None:
    address = allocator.alloc(64)
    fill_block(address, 64, 0xAB)
    allocator.free(address)
    zeroed = allocator.calloc(8, 8)
    assert ctypes.string_at(zeroed, 64) == bytes(64)
    allocator.free(zeroed)
    large = allocator.calloc(1000, 10)
    assert ctypes.string_at(large, 10_000) == bytes(10_000)
    allocator.free(large)


def test_realloc_stays_in_place_within_the_class(allocator: pyslab.SlabAllocator) -> None:
    address = allocator.alloc(40)
    fill_block(address, 40, 7)
    assert allocator.realloc(address, 60) == address
    assert block_intact(address, 40, 7)
    allocator.free(address)


def test_realloc_moves_and_keeps_contents(allocator: pyslab.SlabAllocator) -> None:
    address = allocator.alloc(16)
    fill_block(address, 16, 9)
    grown = allocator.realloc(address, 3000)
    assert grown != address and block_intact(grown, 16, 9)
    assert not allocator.owns(address)
    larger = allocator.realloc(grown, 70_000)
    assert block_intact(larger, 16, 9)
    shrunk = allocator.realloc(larger, 10)
    assert allocator.usable_size(shrunk) == 16 and block_intact(shrunk, 10, 9)
    allocator.free(shrunk)
    assert allocator.stats().live_blocks == 0


def test_realloc_of_nothing_allocates(allocator: pyslab.SlabAllocator) -> None:
    for empty in (None, 0):
        address = allocator.realloc(empty, 32)
        assert allocator.usable_size(address) == 32
        allocator.free(address)


def test_free_of_nothing_does_nothing(allocator: pyslab.SlabAllocator) -> None:
    allocator.free(0)
    allocator.free(None)


def test_freed_slots_are_reused_last_in_first_out(allocator: pyslab.SlabAllocator) -> None:
    keep = allocator.alloc(32)
    a, b = allocator.alloc(32), allocator.alloc(32)
    allocator.free(a)
    allocator.free(b)
    assert allocator.alloc(32) == b
    assert allocator.alloc(32) == a
    for address in (a, b, keep):
        allocator.free(address)


def test_a_full_slab_makes_room_for_a_new_one(allocator: pyslab.SlabAllocator) -> None:
    per_slab = allocator.slab_size // 256
    blocks = [allocator.alloc(256) for _ in range(per_slab * 3 + 1)]
    assert len(set(blocks)) == len(blocks)
    assert allocator.stats().classes[5].slabs == 4
    allocator.validate()
    for address in blocks:
        allocator.free(address)


def test_stats_count_slots_and_peaks(allocator: pyslab.SlabAllocator) -> None:
    blocks = [allocator.alloc(64) for _ in range(100)]
    for address in blocks[:60]:
        allocator.free(address)
    stats = allocator.stats().classes[3]
    assert (stats.slot_size, stats.used_slots, stats.peak_used) == (64, 40, 100)
    assert stats.total_slots == stats.slabs * (allocator.slab_size // 64)
    assert allocator.stats().to_dict()["classes"]
    for address in blocks[60:]:
        allocator.free(address)


def test_stats_report_mapped_bytes_of_the_page_source(allocator: pyslab.SlabAllocator) -> None:
    allocator.alloc(8)
    allocator.alloc(512)
    assert allocator.stats().mapped_bytes == 2 * allocator.slab_size
    assert allocator.page_source.mapped_bytes == 2 * allocator.slab_size


def test_shrink_returns_every_cached_empty_slab() -> None:
    with pyslab.SlabAllocator(policy="first-fit") as alloc:  # keeps every empty slab
        blocks = [alloc.alloc(128) for _ in range(200)]
        for address in blocks:
            alloc.free(address)
        cached = len(alloc.slabs())
        assert cached == 7  # 200 blocks, 32 per slab
        assert alloc.shrink() == cached * alloc.slab_size
        assert alloc.stats().mapped_bytes == 0
        alloc.validate()
        assert alloc.usable_size(alloc.alloc(128)) == 128


def test_close_returns_every_page_and_refuses_further_use() -> None:
    alloc = pyslab.SlabAllocator()
    address = alloc.alloc(64)
    alloc.alloc(50_000)
    alloc.close()
    assert alloc.closed and alloc.page_source.mapped_bytes == 0
    with pytest.raises(pyslab.AllocatorClosedError, match="closed"):
        alloc.alloc(64)
    with pytest.raises(pyslab.AllocatorClosedError):
        alloc.free(address)
    with pytest.raises(pyslab.AllocatorClosedError):
        alloc.usable_size(address)
    assert not alloc.owns(address)
    alloc.close()


def test_context_manager_closes() -> None:
    with pyslab.SlabAllocator() as alloc:
        alloc.alloc(8)
    assert alloc.closed


def test_page_size_and_slab_alignment_are_read_at_run_time() -> None:
    import os

    page = os.sysconf("SC_PAGE_SIZE")
    with pyslab.SlabAllocator(slab_size=4 * page) as alloc:
        assert alloc.page_source.page_size == page
        blocks = [alloc.alloc(1024) for _ in range(9)]
        for slab in alloc.slabs():
            assert slab.base % (4 * page) == 0 and slab.capacity == 4 * page // 1024
        for address in blocks:
            alloc.free(address)
        alloc.validate()

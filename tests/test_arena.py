"""The ``arena`` page source: one region, slabs and large blocks carved from it, RSS given back."""

from __future__ import annotations

import ctypes
import os
from typing import Any

import pytest

import pyslab
import pyslab.core
from tests.support import fill_block, is_mapped, pattern_byte, snapshot, state_machine_case
from tests.test_state_machine import AllocatorMachine

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_mincore = _libc.mincore
_mincore.restype = ctypes.c_int
_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]


def resident_pages(address: int, size: int) -> int:
    """Pages of ``[address, address + size)`` in the resident set, asked of the kernel."""
    pages = -(-size // PAGE)
    vector = (ctypes.c_ubyte * pages)()
    if _mincore(address, size, vector) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return sum(v & 1 for v in vector)


def rss_bytes() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Rss line in /proc/self/smaps_rollup")


def test_slabs_are_carved_from_the_region_aligned_to_their_size() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    with pyslab.SlabAllocator(slab_size=4 * PAGE, page_source=source) as alloc:
        blocks = [alloc.alloc(512) for _ in range(100)]
        start, end = source.region
        for slab in alloc.slabs():
            assert start <= slab.base and slab.base + alloc.slab_size <= end
            assert slab.base % alloc.slab_size == 0
        assert source.mapped_bytes == len(alloc.slabs()) * alloc.slab_size
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_released_slabs_leave_the_resident_set() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    with pyslab.SlabAllocator(policy=pyslab.make_policy("reclaim", keep=0),
                              page_source=source) as alloc:
        blocks = [alloc.alloc(1024) for _ in range(4 * 8)]  # 8 slabs of 4 blocks
        for address in blocks:
            fill_block(address, 1024, 0xA5)
        bases = [s.base for s in alloc.slabs()]
        assert len(bases) == 8
        assert sum(resident_pages(b, alloc.slab_size) for b in bases) == 8 * alloc.slab_size // PAGE
        for address in blocks:
            alloc.free(address)
        assert alloc.slabs() == [] and source.mapped_bytes == 0
        assert sum(resident_pages(b, alloc.slab_size) for b in bases) == 0
        assert all(is_mapped(b) for b in bases)  # still reserved: only the RSS went
        assert source.extents() == [(source.region[0], source.reserved_bytes)]
        alloc.validate()


def test_process_rss_falls_when_large_blocks_go_back() -> None:
    source = pyslab.core.ArenaPageSource(64 * MIB)
    with pyslab.SlabAllocator(page_source=source) as alloc:
        blocks = [alloc.alloc(4 * MIB) for _ in range(8)]
        for address in blocks:
            assert source.region[0] <= address < source.region[1]
            fill_block(address, 4 * MIB, 0x11)
        touched = rss_bytes()
        for address in blocks:
            alloc.free(address)
        assert touched - rss_bytes() > 24 * MIB  # 32 MiB released, whatever else moved
        assert sum(resident_pages(b, 4 * MIB) for b in blocks) == 0


def test_memory_handed_out_again_reads_zero() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    with pyslab.SlabAllocator(policy="reclaim", page_source=source) as alloc:
        large = alloc.alloc(3 * PAGE)
        fill_block(large, 3 * PAGE, 0xFF)
        alloc.free(large)
        again = alloc.alloc(3 * PAGE)
        assert again == large  # first fit by address reuses the same pages
        assert ctypes.string_at(again, 3 * PAGE) == bytes(3 * PAGE)
        alloc.free(again)


def test_large_blocks_come_from_the_arena_and_honour_alignment() -> None:
    source = pyslab.core.ArenaPageSource(4 * MIB)
    with pyslab.SlabAllocator(page_source=source) as alloc:
        start, end = source.region
        blocks = []
        for size, align in [(5000, 8), (3000, 4096), (10, 2048), (70_000, 65536)]:
            address = alloc.alloc(size, align)
            assert start <= address < end and address % align == 0
            assert alloc.usable_size(address) == size and alloc.owns(address)
            blocks.append(address)
        stats = alloc.stats()
        assert (stats.large_blocks, stats.large_bytes) == (4, 5000 + 3000 + 10 + 70_000)
        for address in blocks:
            alloc.free(address)
        assert source.free_bytes == source.reserved_bytes
        assert len(source.extents()) == 1  # every extent coalesced back
        alloc.validate()


def test_large_objects_can_be_left_to_libc() -> None:
    source = pyslab.core.ArenaPageSource(MIB, large_objects=False)
    with pyslab.SlabAllocator(page_source=source) as alloc:
        address = alloc.alloc(100_000)
        assert not source.region[0] <= address < source.region[1]
        assert alloc.stats().large_blocks == 1
        alloc.free(address)


def test_exhaustion_raises_memory_error_and_leaves_the_allocator_consistent() -> None:
    source = pyslab.core.ArenaPageSource(4 * PAGE)
    with pyslab.SlabAllocator(size_classes=(64, 1024), page_source=source,
                              policy="dict-lookup+reclaim") as alloc:
        large = 2 * PAGE - 100
        blocks = {alloc.alloc(64): 64 for _ in range(PAGE // 64)}  # one full slab
        blocks[alloc.alloc(1024)] = 1024  # a second slab
        blocks[alloc.alloc(large)] = large  # two pages: the arena is now full
        for i, (address, size) in enumerate(blocks.items()):
            fill_block(address, size, pattern_byte(i))
        assert source.free_bytes == 0
        before = snapshot(alloc, blocks)
        with pytest.raises(MemoryError, match="no free extent"):
            alloc.alloc(64)  # the 64-byte slab is full and no slab can be carved
        with pytest.raises(MemoryError, match="no free extent"):
            alloc.alloc(PAGE + 1)
        assert snapshot(alloc, blocks) == before  # stats, every slab, every byte
        alloc.validate()
        alloc.free(next(a for a, n in blocks.items() if n == large))
        assert alloc.usable_size(alloc.alloc(PAGE - 100)) == PAGE - 100  # room again: a page
        assert alloc.usable_size(alloc.alloc(64)) == 64  # and a new slab in the other
        alloc.validate()


def test_large_blocks_are_checked_like_libc_ones() -> None:
    with pyslab.SlabAllocator(page_source=pyslab.core.ArenaPageSource(MIB)) as alloc:
        address = alloc.alloc(50_000)
        alloc.free(address)
        with pytest.raises(pyslab.DoubleFreeError, match=f"{address:#x}"):
            alloc.free(address)
        with pytest.raises(pyslab.InvalidFreeError, match="not allocated by this allocator"):
            alloc.free(address + PAGE)
        alloc.validate()


def test_blocks_libc_served_to_reentrant_calls_go_back_to_libc() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    service = source.large_objects()
    assert service is not None
    foreign = _malloc(64)
    assert foreign
    service.record(foreign, 64)
    assert service.holds(foreign) and service.total == 64
    service.release(foreign)  # libc free: the arena never saw it
    assert not service.holds(foreign) and service.was_freed(foreign)
    assert source.free_bytes == source.reserved_bytes
    source.close()


def test_close_unmaps_the_region() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    alloc = pyslab.SlabAllocator(page_source=source)
    alloc.alloc(64)
    alloc.alloc(20_000)
    start = source.region[0]
    assert is_mapped(start)
    alloc.close()
    assert not is_mapped(start) and source.mapped_bytes == 0
    with pytest.raises(ValueError, match="closed"):
        source.map_slab(PAGE)
    source.close()  # harmless twice


def test_a_dropped_arena_is_unmapped() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    start = source.region[0]
    del source
    assert not is_mapped(start)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("1M",), TypeError, "'1M'"),
        ((0,), ValueError, "0"),
        ((-PAGE,), ValueError, f"{-PAGE}"),
        ((MIB, "yes"), TypeError, "'yes'"),
    ],
)
def test_bad_arguments_are_refused(
    args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    size, *rest = args
    kwargs = {"large_objects": rest[0]} if rest else {}
    with pytest.raises(error, match=message):
        pyslab.core.ArenaPageSource(size, **kwargs)


def test_bad_slab_sizes_and_ranges_are_refused() -> None:
    source = pyslab.core.ArenaPageSource(MIB)
    with pytest.raises(ValueError, match="3000"):
        source.map_slab(3000)
    with pytest.raises(ValueError, match="12288"):
        source.map_slab(3 * PAGE)
    with pytest.raises(ValueError, match="not inside the arena"):
        source.release_slab(source.region[1], PAGE)
    with pytest.raises(ValueError, match="overlap a free extent"):
        source.release_slab(source.region[0], PAGE)
    assert source.free_bytes == MIB and source.mapped_bytes == 0
    source.close()


def test_the_size_is_rounded_up_to_pages() -> None:
    source = pyslab.core.ArenaPageSource(PAGE + 1)
    assert source.reserved_bytes == 2 * PAGE
    source.close()


class ArenaMachine(AllocatorMachine):
    """The model-based test of every configuration, on an arena that serves large blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator.close()
        self.allocator = pyslab.SlabAllocator(
            policy=self.configuration, page_source=pyslab.core.ArenaPageSource(64 * MIB)
        )


TestArenaFirstFit = state_machine_case(ArenaMachine, "first-fit", examples=30)
TestArenaAddressMaskFullestFirstReclaim = state_machine_case(
    ArenaMachine, "address-mask+fullest-first+reclaim+stats", examples=30
)

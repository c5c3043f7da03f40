"""``address-mask``: owner lookup by arithmetic over one reserved region; foreign ones refused."""

from __future__ import annotations

import os

import pytest

import pyslab
import pyslab.core
from tests.support import block_intact, fill_block, pattern_byte, snapshot

PAGE = os.sysconf("SC_PAGE_SIZE")


def _mask_policy(alloc: pyslab.SlabAllocator) -> pyslab.Policy:
    return next(p for p in alloc.policy.policies if p.name == "address-mask")


def test_the_policy_supplies_an_arena_for_slabs_only() -> None:
    with pyslab.SlabAllocator(policy="address-mask") as alloc:
        source = alloc.page_source
        assert isinstance(source, pyslab.core.ArenaPageSource)
        assert source.reserved_bytes == 1 << 30
        assert source.large_objects() is None  # large blocks stay with libc
        address = alloc.alloc(64)
        assert source.region[0] <= address < source.region[1]
        alloc.free(address)


def test_an_explicit_page_source_wins() -> None:
    arena = pyslab.core.ArenaPageSource(1 << 20)
    with pyslab.SlabAllocator(policy="address-mask", page_source=arena) as alloc:
        assert alloc.page_source is arena
        assert alloc.policy.page_source is not None
        blocks = [alloc.alloc(100) for _ in range(100)]
        assert all(arena.region[0] <= b < arena.region[1] for b in blocks)
        for address in blocks:
            alloc.free(address)


def test_without_the_policy_the_default_source_is_mmap() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        assert alloc.policy.page_source is None
        assert isinstance(alloc.page_source, pyslab.core.MmapPageSource)


def test_every_byte_of_every_slab_finds_its_slab() -> None:
    with pyslab.SlabAllocator(slab_size=2 * PAGE, policy="address-mask") as alloc:
        blocks = [alloc.alloc(size) for size in (8, 64, 1024) for _ in range(40)]
        for slab in alloc.slabs():
            for address in (slab.base, slab.first, slab.base + 2 * PAGE - 1, slab.end - 1):
                assert alloc.policy.find_owner(address) is slab
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_addresses_outside_every_slab_find_nothing() -> None:
    with pyslab.SlabAllocator(policy="address-mask") as alloc:
        address = alloc.alloc(64)
        start, end = alloc.page_source.region  # type: ignore[attr-defined]
        find = alloc.policy.find_owner
        slab_end = alloc.slabs()[0].base + alloc.slab_size  # the only slab: next is free
        for foreign in (0, 8, start - 1, start - PAGE, end, end + 5 * PAGE, 2**60, -16, slab_end):
            assert find(foreign) is None
        assert _mask_policy(alloc).slabs_outside == 0  # type: ignore[attr-defined]
        alloc.free(address)


def test_foreign_and_interior_frees_are_refused_and_change_nothing() -> None:
    with pyslab.SlabAllocator(policy="address-mask+reclaim") as alloc:
        blocks = {alloc.alloc(size): size for size in (8, 48, 200, 1000, 5000)}
        for i, (address, size) in enumerate(blocks.items()):
            fill_block(address, size, pattern_byte(i))
        end = alloc.page_source.region[1]  # type: ignore[attr-defined]
        before = snapshot(alloc, blocks)
        small = next(iter(blocks))
        beyond_slabs = max(s.base for s in alloc.slabs()) + alloc.slab_size  # in the region
        for bad in (end + 64, small + 8, beyond_slabs):
            with pytest.raises(pyslab.InvalidFreeError, match=f"{bad:#x}"):
                alloc.free(bad)
        assert snapshot(alloc, blocks) == before
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_reclaimed_slabs_are_forgotten() -> None:
    policies: list[pyslab.Policy | str] = ["address-mask", pyslab.make_policy("reclaim", keep=0)]
    with pyslab.SlabAllocator(policy=policies) as alloc:
        blocks = [alloc.alloc(512) for _ in range(24)]  # 3 slabs
        bases = [s.base for s in alloc.slabs()]
        for address in blocks:
            alloc.free(address)
        assert alloc.slabs() == []
        assert all(alloc.policy.find_owner(b) is None for b in bases)
        with pytest.raises(pyslab.InvalidFreeError, match="not allocated"):
            alloc.free(blocks[0] + 8)
        again = alloc.alloc(512)
        assert alloc.policy.find_owner(again) is alloc.slabs()[0]  # carved again, found again
        alloc.free(again)
        alloc.validate()


def test_set_policy_on_an_mmap_allocator_falls_back_to_a_dict_for_its_slabs() -> None:
    with pyslab.SlabAllocator() as alloc:
        blocks = {alloc.alloc(size): size for size in (8, 64, 300, 900) for _ in range(10)}
        for i, (address, size) in enumerate(blocks.items()):
            fill_block(address, size, pattern_byte(i))
        alloc.set_policy("address-mask+reclaim")
        mask = _mask_policy(alloc)
        assert mask.slabs_outside == len(alloc.slabs()) > 0  # type: ignore[attr-defined]
        for slab in alloc.slabs():
            assert alloc.policy.find_owner(slab.first) is slab
        with pytest.raises(pyslab.InvalidFreeError):
            alloc.free(8)
        for i, (address, size) in enumerate(blocks.items()):
            assert block_intact(address, size, pattern_byte(i))
            alloc.free(address)
        assert mask.slabs_outside == len(alloc.slabs())  # type: ignore[attr-defined]
        alloc.validate()


def test_a_full_region_raises_memory_error_and_keeps_the_heap() -> None:
    policy = pyslab.make_policy("address-mask", region=2 * PAGE)
    with pyslab.SlabAllocator(size_classes=(64, 128), policy=policy) as alloc:
        blocks = {alloc.alloc(64): 64 for _ in range(PAGE // 64)}
        blocks[alloc.alloc(128)] = 128
        for i, (address, size) in enumerate(blocks.items()):
            fill_block(address, size, pattern_byte(i))
        before = snapshot(alloc, blocks)
        with pytest.raises(MemoryError, match="no free extent"):
            alloc.alloc(64)
        assert snapshot(alloc, blocks) == before
        alloc.validate()
        assert alloc.usable_size(alloc.alloc(100_000)) == 100_000  # large: libc, not the region
        for address in blocks:
            alloc.free(address)
        alloc.validate()


@pytest.mark.parametrize(
    ("region", "error"), [("1G", TypeError), (0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_a_bad_region_is_refused(region: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=repr(region)):
        pyslab.make_policy("address-mask", region=region)

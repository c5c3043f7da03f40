"""``fullest-first``: allocations go to the fullest partial slab, so that the others drain."""

from __future__ import annotations

import random
from typing import Any

import pytest

import pyslab
from tests.support import block_intact, fill_block, pattern_byte

SLOT = 64


def _by_slab(alloc: pyslab.SlabAllocator, blocks: list[int]) -> dict[int, list[int]]:
    """Blocks grouped by slab serial."""
    groups: dict[int, list[int]] = {}
    for address in blocks:
        slab = alloc.policy.find_owner(address)
        assert slab is not None
        groups.setdefault(slab.serial, []).append(address)
    return groups


def _check_current_is_a_fullest_partial_slab(alloc: pyslab.SlabAllocator) -> None:
    fullest = next(p for p in alloc.policy.policies if p.name == "fullest-first")
    fullest.check()  # the buckets agree with the slabs
    for size_class in alloc.size_classes:
        partial = [s for s in size_class.slabs if 0 < s.used < s.capacity]
        current = size_class.current
        if current is not None and partial:
            assert current.free_count == min(s.free_count for s in partial), size_class


def test_the_fullest_partial_slab_is_chosen_when_current_fills() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup+fullest-first") as alloc:
        per_slab = alloc.slab_size // SLOT
        groups = _by_slab(alloc, [alloc.alloc(SLOT) for _ in range(4 * per_slab)])
        # leave slabs 0..3 with 10, 3, 20 and 0 free slots; slab 3 (full) is freed last
        for serial, holes in ((0, 10), (1, 3), (2, 20)):
            for address in groups[serial][:holes]:
                alloc.free(address)
        size_class = alloc.size_classes[3]
        assert size_class.current is not None and size_class.current.serial == 1
        served = [alloc.alloc(SLOT) for _ in range(3 + 10 + 20)]
        order = [alloc.policy.find_owner(a).serial for a in served]  # type: ignore[union-attr]
        assert order == [1] * 3 + [0] * 10 + [2] * 20
        _check_current_is_a_fullest_partial_slab(alloc)
        alloc.validate()


def test_a_refilled_slab_becomes_current_at_once() -> None:
    with pyslab.SlabAllocator(policy="fullest-first") as alloc:
        per_slab = alloc.slab_size // SLOT
        groups = _by_slab(alloc, [alloc.alloc(SLOT) for _ in range(3 * per_slab)])
        for address in groups[2][:30]:
            alloc.free(address)  # slab 2: 30 free
        alloc.free(groups[0][5])  # slab 0 was full: now 1 free, the fullest
        assert alloc.size_classes[3].current.serial == 0  # type: ignore[union-attr]
        assert alloc.alloc(SLOT) == groups[0][5]
        alloc.validate()


def test_current_moves_when_it_drains_below_another_slab() -> None:
    with pyslab.SlabAllocator(policy="fullest-first") as alloc:
        per_slab = alloc.slab_size // SLOT
        groups = _by_slab(alloc, [alloc.alloc(SLOT) for _ in range(2 * per_slab)])
        alloc.free(groups[1][0])
        alloc.free(groups[0][0])  # both have 1 free; slab 0 refilled last: current
        alloc.free(groups[0][1])  # slab 0 drains to 2 free: slab 1 (1 free) takes over
        assert alloc.size_classes[3].current.serial == 1  # type: ignore[union-attr]
        assert alloc.alloc(SLOT) == groups[1][0]
        alloc.validate()


def test_an_empty_cached_slab_is_used_before_a_new_one() -> None:
    with pyslab.SlabAllocator(policy="fullest-first") as alloc:
        per_slab = alloc.slab_size // SLOT
        blocks = [alloc.alloc(SLOT) for _ in range(2 * per_slab)]
        for address in blocks:
            alloc.free(address)
        slabs = alloc.slabs()
        assert len(slabs) == 2
        again = [alloc.alloc(SLOT) for _ in range(per_slab + 1)]
        assert alloc.slabs() == slabs  # no new slab was mapped
        for address in again:
            alloc.free(address)
        alloc.validate()


@pytest.mark.parametrize("seed", range(4))
def test_current_is_always_a_fullest_partial_slab(seed: int) -> None:
    rng = random.Random(seed)
    with pyslab.SlabAllocator(policy="fullest-first+reclaim") as alloc:
        blocks: dict[int, tuple[int, int]] = {}
        for step in range(3000):
            if blocks and rng.random() < 0.48:
                address = rng.choice(list(blocks))
                size, byte = blocks.pop(address)
                assert block_intact(address, size, byte)
                alloc.free(address)
            else:
                size = rng.choice((8, 24, 64, 64, 200))
                address = alloc.alloc(size)
                blocks[address] = (size, pattern_byte(step))
                fill_block(address, size, pattern_byte(step))
            _check_current_is_a_fullest_partial_slab(alloc)
        alloc.validate()
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_set_policy_files_the_slabs_of_a_live_allocator() -> None:
    with pyslab.SlabAllocator() as alloc:
        per_slab = alloc.slab_size // SLOT
        groups = _by_slab(alloc, [alloc.alloc(SLOT) for _ in range(3 * per_slab)])
        for serial, holes in ((0, 7), (1, 2), (2, 40)):
            for address in groups[serial][:holes]:
                alloc.free(address)
        alloc.set_policy("fullest-first")
        alloc.size_classes[3].current = None  # as after the current slab fills
        assert alloc.policy.select_slab(alloc.size_classes[3]).serial == 1  # type: ignore[union-attr]
        alloc.size_classes[3].current = alloc.policy.select_slab(alloc.size_classes[3])
        alloc.validate()


def _churn(spec: str, seed: int) -> int:
    """Slabs mapped after a churn whose survivors die in phases; returns the slab count.

    Sixteen slabs fill; the older eight keep most of their blocks (long-lived data with a few
    holes), the newer eight were a burst of temporaries of which four per slab survive for a
    while. Then new long-lived blocks arrive while the survivors die, in a random interleaving.
    """
    rng = random.Random(seed)
    with pyslab.SlabAllocator(policy=spec) as alloc:
        per_slab = alloc.slab_size // SLOT
        groups = _by_slab(alloc, [alloc.alloc(SLOT) for _ in range(16 * per_slab)])
        survivors: list[int] = []
        for serial in range(16):
            blocks = groups[serial]
            rng.shuffle(blocks)
            if serial < 8:
                dying = blocks[:16]  # 16 holes in an old slab
            else:
                dying, kept = blocks[4:], blocks[:4]
                survivors += kept
            for address in dying:
                alloc.free(address)
        steps = ["alloc"] * (8 * 16) + ["free"] * len(survivors)
        rng.shuffle(steps)
        rng.shuffle(survivors)
        for step in steps:
            if step == "alloc":
                alloc.alloc(SLOT)
            else:
                alloc.free(survivors.pop())
        alloc.validate()
        return alloc.stats().slabs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_a_churn_fullest_first_leaves_less_mapped_than_first_fit(seed: int) -> None:
    # fullest-first puts the new blocks in the holes of the old slabs, so that the burst's
    # slabs empty and are reclaimed (8 old slabs + 1 kept empty); first-fit puts them in the
    # newest slabs, among the survivors, which then stay mapped.
    fullest = _churn("fullest-first+reclaim(keep=1)", seed)
    first = _churn("first-fit+reclaim(keep=1)", seed)
    assert fullest == 9
    assert first >= fullest + 2


def test_a_corrupted_bucket_is_reported() -> None:
    with pyslab.SlabAllocator(policy="fullest-first") as alloc:
        per_slab = alloc.slab_size // SLOT
        blocks = [alloc.alloc(SLOT) for _ in range(per_slab + 10)]
        policy: Any = alloc.policy.policies[1]
        policy.check()
        policy._masks[3] ^= 1 << 5  # a bit for a bucket that is empty
        with pytest.raises(pyslab.CorruptionError, match="bitmap"):
            policy.check()
        policy._masks[3] ^= 1 << 5
        policy._buckets[3][per_slab - 10].clear()  # the partial slab vanishes from its bucket
        with pytest.raises(pyslab.CorruptionError, match="1 partial"):
            policy.check()
        del blocks


@pytest.mark.parametrize("spec", ["fullest-first", "fullest-first+reclaim"])
def test_slabs_emptied_earlier_can_be_shrunk_or_reclaimed(spec: str) -> None:
    with pyslab.SlabAllocator(policy=spec) as alloc:
        per_slab = alloc.slab_size // SLOT
        groups = _by_slab(alloc, [alloc.alloc(SLOT) for _ in range(3 * per_slab)])
        for address in groups[0] + groups[1]:
            alloc.free(address)  # two slabs empty by their last free (reclaim may release one)
        alloc.validate()
        assert alloc.shrink() >= alloc.slab_size  # the cached empty slabs go
        assert [s.serial for s in alloc.slabs()] == [2]
        alloc.validate()
        alloc.free(groups[2][0])
        assert alloc.alloc(SLOT) == groups[2][0]
        for address in groups[2]:
            alloc.free(address)
        alloc.validate()

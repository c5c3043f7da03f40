"""Policies: discovery by entry point, composition, swapping on a live allocator, reclaim."""

from __future__ import annotations

import pytest

import pyslab
import pyslab.core
from tests.support import block_intact, fill_block, is_mapped, pattern_byte


def test_built_in_policies_are_registered_with_descriptions() -> None:
    registered = pyslab.policies()
    for name in ("first-fit", "dict-lookup", "reclaim"):
        assert registered.get(name)


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(pyslab.UnknownPolicyError, match=r"'best-fit'.*dict-lookup.*first-fit"):
        pyslab.SlabAllocator(policy="best-fit")


def test_a_non_policy_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="42"):
        pyslab.SlabAllocator(policy=[42])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        (None, "dict-lookup+reclaim+thread-cache(magazine=16)"),
        ((), "dict-lookup+reclaim+thread-cache(magazine=16)"),
        ("first-fit", "first-fit"),
        ("dict-lookup", "dict-lookup"),
        ("dict-lookup+reclaim", "dict-lookup+reclaim"),
        (("dict-lookup", "reclaim"), "dict-lookup+reclaim"),
        ([pyslab.make_policy("reclaim", keep=3)], "reclaim(keep=3)"),
        ("dict-lookup+reclaim( keep = 4 )", "dict-lookup+reclaim(keep=4)"),
        ("thread-cache(magazine=16)+dict-lookup", "thread-cache(magazine=16)+dict-lookup"),
    ],
)
def test_specs_compose(spec: pyslab.PolicySpec, name: str) -> None:
    with pyslab.SlabAllocator(policy=spec) as alloc:
        assert alloc.policy.name == name == alloc.stats().policy
        assert alloc.policy.policies[0].name == "first-fit"


def test_later_policies_override_the_decisions_they_provide() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        resolved = alloc.policy
        assert resolved.find_owner.__self__ is resolved.policies[1]  # type: ignore[attr-defined]
        assert resolved.select_slab.__self__ is resolved.policies[0]  # type: ignore[attr-defined]


def test_a_policy_instance_serves_one_allocator() -> None:
    shared = pyslab.make_policy("dict-lookup")
    with pyslab.SlabAllocator(policy=shared), pytest.raises(pyslab.PolicyError, match="bound"):
        pyslab.SlabAllocator(policy=shared)
    with pyslab.SlabAllocator(policy=shared) as reused:  # free again after close
        reused.free(reused.alloc(8))


def test_bad_policy_parameters_are_named() -> None:
    with pytest.raises(pyslab.PolicyError, match=r"'reclaim'.*spare"):
        pyslab.make_policy("reclaim", spare=2)
    with pytest.raises(ValueError, match="-1"):
        pyslab.make_policy("reclaim", keep=-1)


def test_first_fit_allocates_from_the_newest_slab_with_room() -> None:
    with pyslab.SlabAllocator(policy="first-fit") as alloc:
        per_slab = alloc.slab_size // 512
        blocks = [alloc.alloc(512) for _ in range(3 * per_slab)]  # three full slabs
        oldest, newest = blocks[0], blocks[-1]
        alloc.free(oldest)
        assert alloc.alloc(512) == oldest  # only the oldest has room
        alloc.free(oldest)
        alloc.free(newest)
        assert alloc.alloc(512) == newest  # both have room: the newest wins, as the seed's walk
        alloc.validate()


def test_set_policy_keeps_every_live_block() -> None:
    with pyslab.SlabAllocator() as alloc:
        blocks = {alloc.alloc(size): size for size in range(1, 2000, 7)}
        for i, (address, size) in enumerate(blocks.items()):
            fill_block(address, size, pattern_byte(i))
        for spec in ("dict-lookup", "dict-lookup+reclaim", "first-fit", "reclaim"):
            alloc.set_policy(spec)
            assert alloc.policy.name == spec
            alloc.validate()
            assert all(
                block_intact(a, n, pattern_byte(i)) for i, (a, n) in enumerate(blocks.items())
            )
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_set_policy_to_reclaim_releases_cached_empty_slabs() -> None:
    with pyslab.SlabAllocator(policy="first-fit") as alloc:  # keeps every empty slab
        blocks = [alloc.alloc(64) for _ in range(640)]
        for address in blocks:
            alloc.free(address)
        assert alloc.stats().classes[3].empty_slabs == 10
        alloc.set_policy(pyslab.make_policy("reclaim", keep=2))
        assert alloc.stats().classes[3].empty_slabs == 2
        alloc.validate()


def test_a_failed_set_policy_keeps_the_old_one() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        with pytest.raises(pyslab.UnknownPolicyError):
            alloc.set_policy("no-such-policy")
        assert alloc.policy.name == "dict-lookup"
        alloc.free(alloc.alloc(8))


@pytest.mark.parametrize("spec", ["reclaim", "dict-lookup+reclaim"])
def test_reclaim_really_unmaps_empty_slabs(spec: str) -> None:
    with pyslab.SlabAllocator(policy=pyslab.make_policy("reclaim", keep=0)) as alloc:
        if spec != "reclaim":
            alloc.set_policy(("dict-lookup", pyslab.make_policy("reclaim", keep=0)))
        blocks = [alloc.alloc(1024) for _ in range(40)]  # ten slabs
        bases = {s.base for s in alloc.slabs()}
        assert len(bases) == 10 and all(is_mapped(b) for b in bases)
        for address in blocks:
            alloc.free(address)
        assert alloc.slabs() == [] and alloc.page_source.mapped_bytes == 0
        assert not any(is_mapped(b) for b in bases)  # gone from /proc/self/maps


def test_reclaim_keeps_a_cache_of_empty_slabs() -> None:
    with pyslab.SlabAllocator(policy=pyslab.make_policy("reclaim", keep=2)) as alloc:
        blocks = [alloc.alloc(1024) for _ in range(40)]
        for address in blocks:
            alloc.free(address)
        assert alloc.stats().classes[-1].slabs == 2
        assert alloc.stats().mapped_bytes == 2 * alloc.slab_size
        assert all(is_mapped(s.base) for s in alloc.slabs())


class CountingPolicy(pyslab.Policy):
    """A third-party observer: counts every event it is told of."""

    name = "counting"
    description = "counts allocations, frees and slabs"

    def __init__(self) -> None:
        self.allocated = self.freed = self.added = self.removed = self.refilled = 0

    def block_allocated(self, slab: pyslab.core.MemorySlab, address: int, size: int) -> None:
        assert slab.is_live(address) and size <= slab.slot_size
        self.allocated += 1

    def block_freed(self, slab: pyslab.core.MemorySlab, address: int) -> None:
        assert not slab.is_live(address)
        self.freed += 1

    def slab_added(self, size_class: pyslab.core.SizeClass, slab: pyslab.core.MemorySlab) -> None:
        self.added += 1

    def slab_removed(self, size_class: pyslab.core.SizeClass, slab: pyslab.core.MemorySlab) -> None:
        self.removed += 1

    def slab_refilled(
        self, size_class: pyslab.core.SizeClass, slab: pyslab.core.MemorySlab
    ) -> None:
        self.refilled += 1


def test_observers_see_every_event_and_compose_with_decisions() -> None:
    counter = CountingPolicy()
    with pyslab.SlabAllocator(policy=("dict-lookup", "reclaim(keep=1)", counter)) as alloc:
        assert alloc.policy.observes_blocks
        blocks = [alloc.alloc(256) for _ in range(64)]  # four slabs
        for address in blocks:
            alloc.free(address)
        assert (counter.allocated, counter.freed) == (64, 64)
        assert counter.added == 4 and counter.removed == 3 and counter.refilled == 4
        alloc.validate()


def test_unobserved_allocators_take_the_plain_path() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup+reclaim") as alloc:
        assert not alloc.policy.observes_blocks
        assert alloc.policy.block_allocated is None and alloc.policy.block_freed is None
        assert alloc.policy.slab_added is not None  # dict-lookup indexes new slabs


def test_observers_added_later_learn_existing_slabs() -> None:
    with pyslab.SlabAllocator() as alloc:
        blocks = [alloc.alloc(16) for _ in range(600)]
        counter = CountingPolicy()
        alloc.set_policy(counter)
        assert counter.added == 3
        for address in blocks:
            alloc.free(address)
        assert counter.freed == 600


class BadColor(pyslab.Policy):
    name = "bad-color"

    def slab_color(self, size_class: pyslab.core.SizeClass, serial: int) -> int:
        return 12


def test_a_bad_color_is_refused_before_mapping() -> None:
    with pyslab.SlabAllocator(policy=BadColor()) as alloc:
        with pytest.raises(pyslab.PolicyError, match="12"):
            alloc.alloc(64)
        assert alloc.page_source.mapped_bytes == 0
        alloc.validate()

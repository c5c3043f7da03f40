"""The core's conformance tests rerun in jemalloc's re-entrant mode (see ``hooks.py``).

Every test bound below runs again, under representative configurations, with
:class:`ReentrantHooks` composed in: an alloc+free pair is made from inside every notification,
that is from inside the locked regions of the core. Each must be served by the re-entrant path
(libc, deferred free), must not disturb what the test checks, and must leave the heap valid.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import pyslab
from tests import test_allocator as core
from tests import test_bad_input as bad_input
from tests import test_free_list as free_list
from tests.reliability.hooks import HOOKS_NAME, ReentrantHooks, with_hooks
from tests.support import CONFIGURATIONS, block_intact, fill_block

# The conformance set: every test of the core that runs on the ``allocator`` fixture, bound
# here under its own name so that pytest collects it in this module, where ``allocator`` is
# overridden (``populated`` is the bad-input tests' fixture, which asks for ``allocator``).
populated = bad_input.populated
test_a_full_slab_makes_room_for_a_new_one = core.test_a_full_slab_makes_room_for_a_new_one
test_alignment_beyond_every_class_goes_to_libc = core.test_alignment_beyond_every_class_goes_to_libc
test_blocks_are_real_writable_memory = core.test_blocks_are_real_writable_memory
test_calloc_zeroes_reused_memory = core.test_calloc_zeroes_reused_memory
test_every_alignment_is_honoured = core.test_every_alignment_is_honoured
test_freed_slots_are_reused_last_in_first_out = core.test_freed_slots_are_reused_last_in_first_out
test_large_requests_fall_through_to_libc_and_are_tracked = (
    core.test_large_requests_fall_through_to_libc_and_are_tracked
)
test_realloc_moves_and_keeps_contents = core.test_realloc_moves_and_keeps_contents
test_realloc_stays_in_place_within_the_class = core.test_realloc_stays_in_place_within_the_class
test_small_requests_are_served_by_the_smallest_fitting_class = (
    core.test_small_requests_are_served_by_the_smallest_fitting_class
)
test_stats_count_slots_and_peaks = core.test_stats_count_slots_and_peaks
test_stats_report_mapped_bytes_of_the_page_source = (
    core.test_stats_report_mapped_bytes_of_the_page_source
)
test_double_free_of_a_large_block = bad_input.test_double_free_of_a_large_block
test_double_free_of_every_class = bad_input.test_double_free_of_every_class
test_interior_pointers_are_refused = bad_input.test_interior_pointers_are_refused
test_never_allocated_slots_are_refused = bad_input.test_never_allocated_slots_are_refused
test_out_of_memory_leaves_the_allocator_consistent = (
    bad_input.test_out_of_memory_leaves_the_allocator_consistent
)
test_realloc_of_a_freed_block_is_refused = bad_input.test_realloc_of_a_freed_block_is_refused
test_walking_free_node_pointers_finds_exactly_the_free_slots = (
    free_list.test_walking_free_node_pointers_finds_exactly_the_free_slots
)


def _hooks_of(allocator: pyslab.SlabAllocator) -> ReentrantHooks:
    return next(p for p in allocator.policy.policies if isinstance(p, ReentrantHooks))


# The seed's design, the usual production composition, and the largest composition listed.
REPRESENTATIVE = tuple(dict.fromkeys(("first-fit", "dict-lookup+reclaim", CONFIGURATIONS[-1])))


@pytest.fixture(params=REPRESENTATIVE)
def allocator(request: pytest.FixtureRequest) -> Iterator[pyslab.SlabAllocator]:
    """Each configuration with the re-entrant hook composed in; checked after the test."""
    parts, hooks = with_hooks(f"{request.param}+{HOOKS_NAME}")
    assert hooks is not None
    with pyslab.SlabAllocator(policy=parts) as alloc:
        yield alloc
        alloc.validate()
        assert hooks.errors == []
        assert dict(hooks.normal) == {}, "a nested call was served by the normal path"
        assert alloc.deferred_errors == []
        stats = alloc.stats()
        assert stats.reentrant_allocs >= hooks.pairs
        assert stats.deferred_frees >= hooks.pairs


@pytest.mark.parametrize("spec", ["first-fit", "dict-lookup+reclaim", "reclaim+dict-lookup"])
def test_every_notification_takes_the_reentrant_path(spec: str) -> None:
    parts, hooks = with_hooks(f"{spec}+{HOOKS_NAME}")
    assert hooks is not None
    keep = pyslab.make_policy("reclaim", keep=0)
    parts = [p for p in parts if p != "reclaim"] + ([keep] if "reclaim" in spec else [])
    with pyslab.SlabAllocator(policy=parts) as allocator:
        blocks = [allocator.alloc(256) for _ in range(3 * allocator.slab_size // 256)]
        for i, address in enumerate(blocks):
            fill_block(address, 256, i % 250 + 1)
        allocator.free(blocks.pop(0))  # a full slab gets a free slot: slab_refilled
        for i, address in enumerate(blocks, start=1):
            assert block_intact(address, 256, i % 250 + 1)
            allocator.free(address)  # the slabs empty; reclaim releases them: slab_removed
        allocator.validate()
        expected = {"slab_added", "block_allocated", "block_freed", "slab_refilled"}
        if "reclaim" in spec:
            expected.add("slab_removed")
        assert set(hooks.calls) == expected
        assert dict(hooks.normal) == {}
        assert hooks.errors == []
        stats = allocator.stats()
        assert stats.live_blocks == 0
        assert stats.reentrant_allocs == stats.deferred_frees == hooks.pairs


def test_notifications_from_shrink_and_set_policy_are_reentrant_too() -> None:
    parts, hooks = with_hooks(f"first-fit+{HOOKS_NAME}")
    assert hooks is not None
    with pyslab.SlabAllocator(policy=parts) as allocator:
        for address in [allocator.alloc(512) for _ in range(20)]:
            allocator.free(address)
        allocator.shrink()
        allocator.validate()
        assert dict(hooks.normal) == {}
        other, more = with_hooks(f"dict-lookup+{HOOKS_NAME}")
        assert more is not None
        allocator.free(allocator.alloc(64))
        allocator.set_policy(other)
        allocator.validate()
        assert dict(more.normal) == {}

"""A model-based test: random alloc/calloc/realloc/free under every policy configuration.

Every live block carries a distinct byte pattern. After every step: no two live blocks
overlap, every pattern is intact, every address honours its alignment, ``stats()`` agrees with
the model, and ``validate()`` passes. A rule also swaps the policy of the live allocator.
"""

from __future__ import annotations

import ctypes
import itertools

import hypothesis.strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

import pyslab
from tests.support import (
    CONFIGURATIONS,
    FRONT_END_CONFIGURATIONS,
    block_intact,
    fill_block,
    pattern_byte,
    state_machine_case,
)

SIZES = st.one_of(st.integers(1, 1024), st.integers(1025, 9000), st.sampled_from([8, 16, 1024]))
ALIGNMENTS = st.sampled_from([1, 8, 16, 64, 256, 1024, 4096])


def expected_slot(allocator: pyslab.SlabAllocator, size: int, align: int) -> int | None:
    """The slot size the model expects: smallest class fitting size and alignment, else None."""
    for size_class in allocator.size_classes:
        if size_class.slot_size >= size and size_class.alignment >= align:
            return size_class.slot_size
    return None


class AllocatorMachine(RuleBasedStateMachine):
    configuration: str = "first-fit"
    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.allocator = pyslab.SlabAllocator(policy=self.configuration)
        # address -> (requested size, alignment, pattern byte, expected slot or None)
        self.model: dict[int, tuple[int, int, int, int | None]] = {}
        self.freed: list[int] = []
        self.counter = 0

    @initialize()
    def start(self) -> None:
        self.allocator.validate()

    def _record(self, address: int, size: int, align: int) -> int:
        assert address not in self.model
        self.counter += 1
        byte = pattern_byte(self.counter)
        fill_block(address, size, byte)
        self.model[address] = (size, align, byte, expected_slot(self.allocator, size, align))
        return address

    @rule(target=blocks, size=SIZES, align=ALIGNMENTS)
    def alloc(self, size: int, align: int) -> int:
        return self._record(self.allocator.alloc(size, align), size, align)

    @rule(target=blocks, count=st.integers(1, 64), size=st.integers(1, 64))
    def calloc(self, count: int, size: int) -> int:
        address = self.allocator.calloc(count, size)
        assert ctypes.string_at(address, count * size) == bytes(count * size)
        return self._record(address, count * size, 8)

    @rule(target=blocks, address=consumes(blocks), size=SIZES)
    def realloc(self, address: int, size: int) -> int:
        old_size, _, byte, _ = self.model.pop(address)
        new = self.allocator.realloc(address, size)
        if new != address:
            self.freed.append(address)
        kept = min(old_size, size)
        assert block_intact(new, kept, byte)
        return self._record(new, size, 8)

    @rule(address=consumes(blocks))
    def free(self, address: int) -> None:
        size, _, byte, _ = self.model.pop(address)
        assert block_intact(address, size, byte)
        self.allocator.free(address)
        self.freed.append(address)

    @rule(pick=st.integers(0, 2**16))
    def double_free_is_refused(self, pick: int) -> None:
        # an index, not the address itself: real addresses differ from run to run
        stale = [a for a in self.freed if a not in self.model]
        if not stale:
            return
        address = stale[pick % len(stale)]
        before = self.allocator.stats()
        try:
            self.allocator.free(address)
        except pyslab.InvalidFreeError:
            pass
        else:
            raise AssertionError(f"freeing {address:#x} twice was accepted")
        assert self.allocator.stats() == before

    @rule(configuration=st.sampled_from(CONFIGURATIONS + FRONT_END_CONFIGURATIONS))
    def swap_policy(self, configuration: str) -> None:
        self.allocator.set_policy(configuration)

    @rule()
    def shrink(self) -> None:
        self.allocator.shrink()

    @invariant()
    def blocks_are_intact_aligned_and_disjoint(self) -> None:
        spans = []
        for address, (size, align, byte, slot) in self.model.items():
            assert address % align == 0
            assert block_intact(address, size, byte)
            usable = self.allocator.usable_size(address)
            assert usable == (slot if slot is not None else size)
            spans.append((address, address + usable))
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, "two live blocks overlap"

    @invariant()
    def stats_agree_with_the_model(self) -> None:
        stats = self.allocator.stats()
        by_slot = {c.slot_size: c.used_slots - c.cached_slots for c in stats.classes}
        expected = dict.fromkeys(by_slot, 0)
        large = [size for size, _, _, slot in self.model.values() if slot is None]
        for _, _, _, slot in self.model.values():
            if slot is not None:
                expected[slot] += 1
        assert by_slot == expected
        assert (stats.large_blocks, stats.large_bytes) == (len(large), sum(large))
        assert stats.mapped_bytes == stats.slabs * stats.slab_size
        for c in stats.classes:
            assert c.peak_used >= c.used_slots

    @invariant()
    def heap_is_valid(self) -> None:
        self.allocator.validate()

    def teardown(self) -> None:
        for address in list(self.model):
            self.allocator.free(address)
        self.allocator.validate()
        assert self.allocator.stats().live_blocks == 0
        self.allocator.close()


for _configuration in CONFIGURATIONS + FRONT_END_CONFIGURATIONS:
    _case = state_machine_case(AllocatorMachine, _configuration, examples=60, steps=50)
    globals()[f"TestAllocator_{_case.__qualname__.split('.')[0]}"] = _case
del _case  # else pytest collects the last machine a second time under this name

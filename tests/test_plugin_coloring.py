"""``coloring``: slot 0 of successive slabs cycles through cache-line offsets within the slack."""

from __future__ import annotations

from typing import Any

import pytest

import pyslab
import pyslab.core
from tests.support import block_intact, fill_block, pattern_byte, state_machine_case
from tests.test_state_machine import AllocatorMachine

COLORABLE = (16, 48, 192, 320, 768, 1024)
"""Classes for 4 KiB slabs: 192, 320 and 768 leave slack for colors; 16, 48, 1024 do not."""
PALETTES = {48: (0,), 192: (0, 64), 320: (0, 64, 128, 192, 256), 768: (0, 256)}
"""The colors of those classes with 64-byte lines (see ``pyslab_plugins.coloring.colors``)."""


def colors(size_class: pyslab.core.SizeClass, cache_line: int = 64) -> tuple[int, ...]:
    """The plugin's palette for one class, read from a bound ``coloring`` policy."""
    with pyslab.SlabAllocator(
        size_classes=(size_class.slot_size,), slab_size=size_class.slab_size,
        policy=pyslab.make_policy("coloring", cache_line=cache_line),
    ) as alloc:
        coloring: Any = alloc.policy.policies[1]
        return tuple(coloring.palette(alloc.size_classes[0]))


def _class(alloc: pyslab.SlabAllocator, slot: int) -> pyslab.core.SizeClass:
    return next(c for c in alloc.size_classes if c.slot_size == slot)


@pytest.mark.parametrize(
    ("slot", "cache_line", "expected"),
    [
        (192, 64, (0, 64)),  # 21 slots, 64 bytes of slack
        (320, 64, (0, 64, 128, 192, 256)),  # 12 slots, 256 of slack
        (768, 64, (0, 256)),  # alignment 256: steps of 256 within 256 of slack
        (48, 64, (0,)),  # 16 bytes of slack: less than a line
        (48, 16, (0, 16)),  # with 16-byte lines it can be colored
        (1024, 64, (0,)),  # a power of two fills the slab exactly
    ],
)
def test_colors_are_multiples_of_the_line_and_alignment_within_the_slack(
    slot: int, cache_line: int, expected: tuple[int, ...]
) -> None:
    with pyslab.SlabAllocator(size_classes=(slot,), slab_size=4096) as alloc:
        assert colors(alloc.size_classes[0], cache_line) == expected


def test_default_classes_cannot_be_colored() -> None:
    with pyslab.SlabAllocator(slab_size=4096) as alloc:
        assert all(colors(c) == (0,) for c in alloc.size_classes)


@pytest.mark.parametrize("slot", [48, 192, 320, 768])
def test_offsets_cycle_and_no_slot_leaves_its_slab(slot: int) -> None:
    with pyslab.SlabAllocator(
        size_classes=COLORABLE, slab_size=4096, policy="coloring+dict-lookup"
    ) as alloc:
        size_class = _class(alloc, slot)
        palette = PALETTES[slot]
        assert colors(size_class) == palette
        slabs_wanted = 2 * len(palette) + 1
        blocks = [alloc.alloc(slot) for _ in range(slabs_wanted * size_class.slots_per_slab)]
        for i, address in enumerate(blocks):
            fill_block(address, slot, pattern_byte(i))
        slabs = sorted(size_class.slabs, key=lambda s: s.serial)
        assert len(slabs) == slabs_wanted
        offsets = [s.first - s.base for s in slabs]
        assert offsets == [palette[i % len(palette)] for i in range(slabs_wanted)]
        for slab in slabs:
            assert slab.capacity == size_class.slots_per_slab  # coloring costs no slot
            assert slab.end <= slab.base + alloc.slab_size
            assert slab.first % size_class.alignment == 0
        for i, address in enumerate(blocks):
            owner = alloc.policy.find_owner(address)
            assert owner is not None and owner.first <= address and address + slot <= owner.end
            assert block_intact(address, slot, pattern_byte(i))
        alloc.validate()
        for address in blocks:
            alloc.free(address)
        alloc.validate()


def test_each_class_cycles_on_its_own() -> None:
    with pyslab.SlabAllocator(size_classes=COLORABLE, slab_size=4096, policy="coloring") as alloc:
        c192, c320 = _class(alloc, 192), _class(alloc, 320)
        for _ in range(3):  # interleave new slabs of two classes
            [alloc.alloc(192) for _ in range(c192.slots_per_slab)]
            [alloc.alloc(320) for _ in range(c320.slots_per_slab)]
        assert [s.first - s.base for s in c192.slabs] == [0, 64, 0]
        assert [s.first - s.base for s in c320.slabs] == [0, 64, 128]
        alloc.validate()


def test_a_cache_line_parameter_is_checked() -> None:
    assert pyslab.make_policy("coloring", cache_line=32).cache_line == 32  # type: ignore[attr-defined]
    for bad in (0, 48, -64):
        with pytest.raises(ValueError, match=str(bad)):
            pyslab.make_policy("coloring", cache_line=bad)
    with pytest.raises(TypeError, match="'64'"):
        pyslab.make_policy("coloring", cache_line="64")


class ColoredMachine(AllocatorMachine):
    """The model-based test on classes that leave slack, colored, swapping policies freely."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator.close()
        self.allocator = pyslab.SlabAllocator(
            size_classes=COLORABLE, slab_size=4096, policy=self.configuration
        )


TestColoring = state_machine_case(ColoredMachine, "coloring", examples=30)
TestColoringAddressMaskReclaim = state_machine_case(
    ColoredMachine, "address-mask+coloring+reclaim+stats", examples=30
)

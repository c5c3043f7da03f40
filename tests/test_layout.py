"""Size classes and slab sizes are validated with errors that name the bad value."""

from __future__ import annotations

import os

import pytest

import pyslab

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ((16, 8), "ascend strictly: 16 then 8"),
        ((8, 8), "ascend strictly: 8 then 8"),
        ((8, 12), "size class 12 is not a positive multiple"),
        ((0,), "size class 0"),
        ((-8,), "size class -8"),
        ((8, 2 * PAGE), f"size class {2 * PAGE} is larger than the slab size"),
        ((), "at least one class"),
    ],
)
def test_bad_size_classes_are_refused(classes: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pyslab.SlabAllocator(size_classes=classes)


@pytest.mark.parametrize("slab_size", [PAGE // 2, PAGE + 8, 3 * PAGE, 0, -PAGE])
def test_bad_slab_sizes_are_refused(slab_size: int) -> None:
    with pytest.raises(ValueError, match=f"slab_size {slab_size} must be a power-of-two multiple"):
        pyslab.SlabAllocator(slab_size=slab_size)


def test_non_int_layouts_are_type_errors() -> None:
    with pytest.raises(TypeError, match="'8'"):
        pyslab.SlabAllocator(size_classes=("8",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"4096\.0"):
        pyslab.SlabAllocator(slab_size=4096.0)  # type: ignore[arg-type]


def test_custom_classes_with_slack_work() -> None:
    with pyslab.SlabAllocator(size_classes=(48, 192, 768)) as alloc:
        assert [c.alignment for c in alloc.size_classes] == [16, 64, 256]
        address = alloc.alloc(40)
        assert alloc.usable_size(address) == 48
        alloc.free(address)
        alloc.validate()

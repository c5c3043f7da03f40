"""Validation of the size-class table and the lookup tables built from it once per allocator."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

from .libc import PAGE_SIZE, POINTER_SIZE
from .slab import SizeClass

__all__ = ["DEFAULT_SIZE_CLASSES", "DEFAULT_SLAB_SIZE", "build_tables", "check_layout"]

DEFAULT_SIZE_CLASSES: Final[tuple[int, ...]] = (8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_SLAB_SIZE: Final[int] = max(4096, PAGE_SIZE)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_layout(size_classes: Sequence[int], slab_size: int) -> tuple[int, ...]:
    """Return the classes as a tuple after checking them against ``slab_size``.

    Raises:
        TypeError: a class or the slab size is not an int.
        ValueError: the slab size is not a power-of-two multiple of the page size, or the
            classes are empty, not strictly ascending, not multiples of the pointer size, or
            larger than a slab.
    """
    if type(slab_size) is not int:
        raise TypeError(f"slab_size must be an int, not {slab_size!r}")
    if slab_size < PAGE_SIZE or slab_size % PAGE_SIZE or not _is_power_of_two(slab_size):
        raise ValueError(
            f"slab_size {slab_size} must be a power-of-two multiple of the page size {PAGE_SIZE}"
        )
    classes = tuple(size_classes)
    if not classes:
        raise ValueError("size_classes must name at least one class")
    for slot in classes:
        if type(slot) is not int:
            raise TypeError(f"size class {slot!r} is not an int")
        if slot <= 0 or slot % POINTER_SIZE:
            raise ValueError(
                f"size class {slot} is not a positive multiple of the pointer size {POINTER_SIZE}"
            )
        if slot > slab_size:
            raise ValueError(f"size class {slot} is larger than the slab size {slab_size}")
    for smaller, larger in itertools.pairwise(classes):
        if larger <= smaller:
            raise ValueError(f"size classes must ascend strictly: {smaller} then {larger}")
    return classes


def slot_alignment(slot_size: int, slab_size: int) -> int:
    """The alignment every slot of the class has: slab bases are aligned to ``slab_size``, so
    slot ``i`` at ``base + i * slot_size`` is aligned to the lowest set bit of ``slot_size``."""
    return min(slot_size & -slot_size, slab_size)


def build_tables(classes: Sequence[SizeClass]) -> dict[int, list[SizeClass | None]]:
    """For each power-of-two alignment up to the largest class alignment, a list indexed by
    request size giving the smallest class that fits both, or None.

    Complexity: O(alignments x largest class) memory, filled by slices (one per class), once
    per allocator.
    """
    largest = classes[-1].slot_size
    top_alignment = max(c.alignment for c in classes)
    tables: dict[int, list[SizeClass | None]] = {}
    alignment = 1
    while alignment <= top_alignment:
        table: list[SizeClass | None] = [None] * (largest + 1)
        served = 0  # sizes 1..served already have their class
        for size_class in classes:
            if size_class.alignment >= alignment:
                table[served + 1 : size_class.slot_size + 1] = [size_class] * (
                    size_class.slot_size - served
                )
                served = size_class.slot_size
        tables[alignment] = table
        alignment <<= 1
    return tables

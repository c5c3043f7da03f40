"""Bad input gets a documented exception naming the value, and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import pyslab
from tests.support import fill_block, pattern_byte, snapshot


@pytest.fixture
def populated(
    allocator: pyslab.SlabAllocator,
) -> Iterator[tuple[pyslab.SlabAllocator, dict[int, int]]]:
    """An allocator holding live blocks of every class and a large one, each with a pattern."""
    blocks: dict[int, int] = {}
    for i, size in enumerate([8, 8, 16, 30, 64, 100, 250, 500, 1000, 1024, 4000] * 3):
        address = allocator.alloc(size)
        fill_block(address, size, pattern_byte(i))
        blocks[address] = size
    freed = [a for a in list(blocks)[::4] if allocator.usable_size(a) <= 1024]
    for address in freed:
        allocator.free(address)
        del blocks[address]
    yield allocator, blocks
    for address in blocks:
        allocator.free(address)


def _unchanged(
    allocator: pyslab.SlabAllocator, blocks: dict[int, int], action: Callable[[], object],
    error: type[BaseException], match: str,
) -> None:
    before = snapshot(allocator, blocks)
    with pytest.raises(error, match=match):
        action()
    assert snapshot(allocator, blocks) == before
    allocator.validate()


@pytest.mark.parametrize(
    ("size", "error", "match"),
    [
        (0, ValueError, "size must be a positive int, not 0"),
        (-5, ValueError, "not -5"),
        (8.0, TypeError, "8.0"),
        ("8", TypeError, "'8'"),
        (None, TypeError, "None"),
        (True, TypeError, "True"),
    ],
)
def test_bad_sizes(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]], size: object,
    error: type[BaseException], match: str,
) -> None:
    allocator, blocks = populated
    _unchanged(allocator, blocks, lambda: allocator.alloc(size), error, match)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("align", "error", "match"),
    [(3, ValueError, "power of two, not 3"), (0, ValueError, "not 0"), (-8, ValueError, "-8"),
     (8.0, TypeError, "8.0"), ("8", TypeError, "'8'")],
)
def test_bad_alignments(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]], align: object,
    error: type[BaseException], match: str,
) -> None:
    allocator, blocks = populated
    _unchanged(allocator, blocks, lambda: allocator.alloc(16, align), error, match)  # type: ignore[arg-type]


def test_index_like_ints_are_accepted(allocator: pyslab.SlabAllocator) -> None:
    class Index:
        def __index__(self) -> int:
            return 24

    address = allocator.alloc(Index())  # type: ignore[arg-type]
    assert allocator.usable_size(address) == 32
    allocator.free(address)


def test_double_free_of_every_class(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    for size in (8, 16, 32, 64, 128, 256, 512, 1024):
        victim = allocator.alloc(size)
        allocator.free(victim)
        _unchanged(
            allocator, blocks, lambda v=victim: allocator.free(v),  # type: ignore[misc]
            pyslab.DoubleFreeError, f"double free of {victim:#x}",
        )


def test_double_free_of_a_large_block(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    victim = allocator.alloc(50_000)
    allocator.free(victim)
    _unchanged(allocator, blocks, lambda: allocator.free(victim), pyslab.DoubleFreeError,
               f"double free of the large block at {victim:#x}")


def test_interior_pointers_are_refused(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    block = next(a for a, n in blocks.items() if allocator.usable_size(a) == 64)
    for offset in (8, 16, 56):
        _unchanged(allocator, blocks, lambda o=offset: allocator.free(block + o),  # type: ignore[misc]
                   pyslab.InvalidFreeError, f"{block + offset:#x} is inside the slot at {block:#x}")
    for offset in (1, 3, 7):
        _unchanged(allocator, blocks, lambda o=offset: allocator.free(block + o),  # type: ignore[misc]
                   pyslab.InvalidFreeError, f"{block + offset:#x}")


def test_never_allocated_slots_are_refused(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    slab = next(s for s in allocator.slabs() if s.bump < s.end)
    _unchanged(allocator, blocks, lambda: allocator.free(slab.bump), pyslab.InvalidFreeError,
               "never handed out")


@pytest.mark.parametrize("address", [8, 0x1000, -16, 2**60])
def test_foreign_addresses_are_refused(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]], address: int,
) -> None:
    allocator, blocks = populated
    _unchanged(allocator, blocks, lambda: allocator.free(address), pyslab.InvalidFreeError,
               "not allocated by this allocator")


def test_a_block_of_another_allocator_is_foreign(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    with pyslab.SlabAllocator() as other:
        theirs = other.alloc(64)
        _unchanged(allocator, blocks, lambda: allocator.free(theirs), pyslab.InvalidFreeError,
                   f"{theirs:#x} was not allocated by this allocator")
        for query in (allocator.usable_size, lambda a: allocator.realloc(a, 10)):
            _unchanged(allocator, blocks, lambda q=query: q(theirs),  # type: ignore[misc]
                       pyslab.InvalidFreeError, f"{theirs:#x}")


def test_realloc_of_a_freed_block_is_refused(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    victim = allocator.alloc(100)
    allocator.free(victim)
    _unchanged(allocator, blocks, lambda: allocator.realloc(victim, 2000),
               pyslab.DoubleFreeError, f"{victim:#x}")


def test_realloc_with_a_bad_size_keeps_the_block(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    block = next(iter(blocks))
    _unchanged(allocator, blocks, lambda: allocator.realloc(block, -1), ValueError, "-1")


@pytest.mark.parametrize("ptr", ["0x10", 1.5, [], b"", 0.0])
def test_free_of_a_non_address_is_a_type_error(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]], ptr: object,
) -> None:
    allocator, blocks = populated
    _unchanged(allocator, blocks, lambda: allocator.free(ptr), TypeError, "free")  # type: ignore[arg-type]


def test_calloc_checks_both_arguments(
    populated: tuple[pyslab.SlabAllocator, dict[int, int]],
) -> None:
    allocator, blocks = populated
    _unchanged(allocator, blocks, lambda: allocator.calloc(-1, 8), ValueError, "count")
    _unchanged(allocator, blocks, lambda: allocator.calloc(2, "8"), TypeError, "'8'")  # type: ignore[arg-type]
    _unchanged(allocator, blocks, lambda: allocator.calloc(2**40, 2**40), MemoryError, "calloc")


def test_out_of_memory_leaves_the_allocator_consistent(allocator: pyslab.SlabAllocator) -> None:
    kept = allocator.alloc(64)
    fill_block(kept, 64, 0x5A)
    before = snapshot(allocator, {kept: 64})
    with pytest.raises(MemoryError):
        allocator.alloc(2**52)
    assert snapshot(allocator, {kept: 64}) == before
    allocator.free(kept)


def test_exceptions_are_the_documented_types() -> None:
    assert issubclass(pyslab.DoubleFreeError, pyslab.InvalidFreeError)
    assert issubclass(pyslab.InvalidFreeError, ValueError)
    assert issubclass(pyslab.InvalidFreeError, pyslab.PyslabError)
    assert issubclass(pyslab.UnknownPolicyError, LookupError)
    assert issubclass(pyslab.AllocatorClosedError, RuntimeError)

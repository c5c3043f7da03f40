"""One rule for every address and size argument: an int, or an object with ``__index__``
(a numpy integer, an int subclass), never a bool or a float; and clear errors for bad specs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import pyslab


class Address(int):
    """An int subclass, as an address."""


class Index:
    """An object with ``__index__``, as numpy integers are."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class BrokenIndex:
    def __index__(self) -> int:
        raise RuntimeError("boom")


@pytest.mark.parametrize("ptr", [False, True, 0.0, 1.5, "0"])
def test_realloc_refuses_what_free_refuses(ptr: object) -> None:
    with pyslab.SlabAllocator() as heap:
        with pytest.raises(TypeError, match=repr(ptr)):
            heap.free(ptr)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=repr(ptr)):
            heap.realloc(ptr, 8)  # type: ignore[arg-type]
        assert heap.stats().live_blocks == 0


@pytest.mark.parametrize("wrap", [Address, Index])
def test_an_address_with_index_is_the_block_everywhere(wrap: type) -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as heap:
        block = heap.alloc(24)
        assert heap.owns(wrap(block))
        assert heap.usable_size(wrap(block)) == 32
        moved = heap.realloc(wrap(block), 24)
        assert moved == block
        heap.free(wrap(block))
        assert not heap.owns(block)
        heap.validate()


def test_a_failing_index_is_a_type_error_naming_the_value() -> None:
    with pyslab.SlabAllocator() as heap:
        with pytest.raises(TypeError, match="__index__"):
            heap.alloc(BrokenIndex())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="__index__"):
            heap.free(BrokenIndex())  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [5, 3.5, b"dict-lookup", bytearray(b"x")])
def test_a_policy_spec_of_the_wrong_type_is_named(spec: object) -> None:
    with pytest.raises(TypeError, match=r"policy= takes a pyslab.Policy, a spec string"):
        pyslab.SlabAllocator(policy=spec)  # type: ignore[arg-type]


def test_after_close_every_call_on_blocks_is_refused_and_the_heap_queries_answer() -> None:
    heap = pyslab.SlabAllocator()
    block = heap.alloc(24)
    heap.close()
    refused: dict[str, Callable[[], object]] = {
        "alloc": lambda: heap.alloc(24),
        "calloc": lambda: heap.calloc(2, 8),
        "realloc": lambda: heap.realloc(block, 48),
        "free": lambda: heap.free(block),
        "usable_size": lambda: heap.usable_size(block),
        "shrink": heap.shrink,
        "set_policy": lambda: heap.set_policy("dict-lookup"),
        "inspect": lambda: heap.inspect("a look", lambda: None),
        "take_blocks": lambda: heap.take_blocks(heap.size_classes[0], 2),
    }
    for name, call in refused.items():
        with pytest.raises(pyslab.AllocatorClosedError):
            call()
        assert heap.closed, name
    assert heap.stats().live_blocks == 0 and heap.stats().mapped_bytes == 0
    heap.validate()  # checks what close kept: nothing here
    assert not heap.owns(block)
    assert heap.slabs() == []

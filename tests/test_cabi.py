"""The C-callable allocator: C semantics, failures kept out of C, any thread, lifetime.

Every call goes through a C function pointer: the functions are re-made from their bare
addresses (``MALLOC_FUNC(address)``), so ctypes calls them as foreign code, as a C library does.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import pyslab
import pyslab.interop
from pyslab.interop.cabi import CALLOC_FUNC, FREE_FUNC, MALLOC_FUNC, REALLOC_FUNC
from tests.support import block_intact, fill_block


@dataclass
class C:
    """The four functions as C sees them: plain function pointers."""

    malloc: Any
    calloc: Any
    realloc: Any
    free: Any

    @classmethod
    def of(cls, functions: pyslab.interop.CFunctions) -> C:
        return cls(
            MALLOC_FUNC(functions.address("malloc")),
            CALLOC_FUNC(functions.address("calloc")),
            REALLOC_FUNC(functions.address("realloc")),
            FREE_FUNC(functions.address("free")),
        )


@pytest.fixture
def alloc() -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        yield allocator
        allocator.validate()


@pytest.fixture
def c(alloc: pyslab.SlabAllocator) -> C:
    return C.of(pyslab.c_functions(alloc))


@pytest.fixture
def unraisable() -> Iterator[list[Any]]:
    """Whatever an exception escaping into C would report through sys.unraisablehook."""
    seen: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    yield seen
    sys.unraisablehook = previous


def test_malloc_and_free_serve_slab_blocks(alloc: pyslab.SlabAllocator, c: C) -> None:
    blocks = [(c.malloc(size), size) for size in (1, 8, 24, 100, 1024, 5000)]
    for i, (address, size) in enumerate(blocks):
        assert alloc.owns(address)
        fill_block(address, size, i + 1)
    assert alloc.stats().live_blocks == len(blocks)
    for i, (address, size) in enumerate(blocks):
        assert block_intact(address, size, i + 1)
        c.free(address)
    assert alloc.stats().live_blocks == 0


def test_blocks_have_the_alignment_malloc_guarantees(c: C) -> None:
    for size in (1, 7, 8, 15, 16, 17, 40, 100, 3000):
        address = c.malloc(size)
        assert address % (16 if size >= 16 else 8) == 0
        c.free(address)


def test_malloc_of_zero_returns_a_unique_freeable_pointer(
    alloc: pyslab.SlabAllocator, c: C
) -> None:
    first, second = c.malloc(0), c.malloc(0)
    assert first and second and first != second
    c.free(first)
    c.free(second)
    assert alloc.stats().live_blocks == 0


def test_calloc_zeroes_and_handles_zero_and_overflow(
    alloc: pyslab.SlabAllocator, c: C
) -> None:
    dirty = c.malloc(64)
    fill_block(dirty, 64, 0xAB)
    c.free(dirty)
    zeroed = c.calloc(8, 8)
    assert ctypes.string_at(zeroed, 64) == bytes(64)
    empty = c.calloc(0, 16)
    assert empty and alloc.owns(empty)
    assert c.calloc(2**40, 2**40) is None  # the product overflows size_t: NULL
    functions = pyslab.c_functions(alloc)
    assert "calloc(1099511627776, 1099511627776)" in functions.failures[0].call
    functions.clear()
    for address in (zeroed, empty):
        c.free(address)


def test_realloc_follows_c(alloc: pyslab.SlabAllocator, c: C) -> None:
    address = c.realloc(None, 40)  # realloc(NULL, n) is malloc(n)
    assert alloc.owns(address)
    fill_block(address, 40, 7)
    grown = c.realloc(address, 5000)
    assert block_intact(grown, 40, 7) and not alloc.owns(address)
    shrunk = c.realloc(grown, 0)  # a one-byte block, never NULL
    assert shrunk and alloc.usable_size(shrunk) >= 1 and not alloc.owns(grown)
    c.free(shrunk)
    c.free(None)  # free(NULL) does nothing
    assert alloc.stats().live_blocks == 0
    assert not pyslab.c_functions(alloc).failures


def test_failures_return_null_and_are_recorded_never_raised_into_c(
    alloc: pyslab.SlabAllocator, c: C, unraisable: list[Any]
) -> None:
    functions = pyslab.c_functions(alloc)
    live = c.malloc(32)
    assert c.malloc(2**62) is None  # libc refuses: NULL
    c.free(live + 8)  # not a block's start: refused, the block stays live
    assert c.realloc(0xDEAD0, 16) is None  # not pyslab's
    c.free(live)
    c.free(live)  # double free
    assert [f.call for f in functions.failures] == [
        f"malloc({2**62})", f"free({live + 8:#x})", "realloc(0xdead0, 16)",
        f"free({live:#x})",
    ]
    assert [type(f.error) for f in functions.failures] == [
        MemoryError, pyslab.InvalidFreeError, pyslab.InvalidFreeError, pyslab.DoubleFreeError,
    ]
    assert functions.failures[0].thread == threading.current_thread().name
    assert not unraisable
    with pytest.raises(pyslab.interop.CFunctionError, match="4 call") as raised:
        functions.check()
    assert isinstance(raised.value.__cause__, MemoryError)
    functions.check()  # cleared: nothing left to raise
    assert functions.failure_count == 0


def test_a_closed_allocator_gives_null(unraisable: list[Any]) -> None:
    alloc = pyslab.SlabAllocator()
    c = C.of(pyslab.c_functions(alloc))
    alloc.close()
    assert c.malloc(16) is None and c.calloc(1, 1) is None and c.realloc(None, 8) is None
    failures = pyslab.c_functions(alloc).failures
    assert {type(f.error) for f in failures} == {pyslab.AllocatorClosedError}
    assert not unraisable


def test_the_functions_live_as_long_as_the_allocator(alloc: pyslab.SlabAllocator) -> None:
    functions = pyslab.c_functions(alloc)
    assert pyslab.c_functions(alloc) is functions
    malloc_address = functions.address("malloc")
    del functions
    gc.collect()
    malloc = MALLOC_FUNC(malloc_address)  # only the address is left
    address = malloc(48)
    assert alloc.owns(address)
    alloc.free(address)
    with pytest.raises(ValueError, match="'mmap'"):
        pyslab.c_functions(alloc).address("mmap")


def test_the_functions_can_be_called_from_many_threads(alloc: pyslab.SlabAllocator, c: C) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            blocks = []
            for i in range(1500):
                size = (i * 37 + seed) % 700
                address = c.malloc(size) if i % 3 else c.calloc(size, 1)
                ctypes.memset(address, seed, size)
                blocks.append((address, size))
                if i % 4 == 0:
                    address, size = blocks.pop(0)
                    assert block_intact(address, size, seed)
                    c.free(address)
            for address, size in blocks:
                assert block_intact(address, size, seed)
                c.free(c.realloc(address, size + 100))
        except BaseException as error:  # reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not pyslab.c_functions(alloc).failures
    assert alloc.stats().live_blocks == 0


def test_the_functions_can_be_called_from_a_thread_python_never_saw(
    alloc: pyslab.SlabAllocator,
) -> None:
    """pthread_create runs malloc itself as the thread's start routine: ``void *(*)(void *)``
    and ``void *(*)(size_t)`` take their one argument in the same register on the 64-bit ABIs
    pyslab supports, so the new C thread calls pyslab's malloc(64) and exits with its result."""
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [
        ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ]
    libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p)]
    thread = ctypes.c_ulong()
    result = ctypes.c_void_p()
    start = pyslab.c_functions(alloc).address("malloc")
    assert libc.pthread_create(ctypes.byref(thread), None, start, 64) == 0
    assert libc.pthread_join(thread, ctypes.byref(result)) == 0  # releases the GIL meanwhile
    address = result.value
    assert address and alloc.owns(address) and alloc.usable_size(address) == 64
    alloc.free(address)

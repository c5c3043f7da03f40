"""Re-entrant calls: the garbage collector runs finalizers in the middle of allocator calls.

With low ``gc.set_threshold`` values a collection can start whenever the allocator creates a tracked
object (a new slab's record, say), on the thread that holds the lock, in the middle of the
update. Finalizers of cyclic garbage then call the allocator again. Those calls must neither
deadlock nor corrupt the heap: frees are deferred to the end of the outer call, allocations are
served by libc.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

import pyslab
from tests.support import CONFIGURATIONS


@pytest.fixture
def eager_gc() -> Iterator[None]:
    old = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.collect()


class FreesOnFinalize:
    """Cyclic garbage whose finalizer frees a block: collected only by the cycle collector."""

    def __init__(self, allocator: pyslab.SlabAllocator, address: int) -> None:
        self.allocator = allocator
        self.address = address
        self.cycle = self

    def __del__(self) -> None:
        self.allocator.free(self.address)


class AllocatesOnFinalize:
    """Cyclic garbage whose finalizer allocates, keeping what it got in ``sink``."""

    def __init__(self, allocator: pyslab.SlabAllocator, sink: list[int]) -> None:
        self.allocator = allocator
        self.sink = sink
        self.cycle = self

    def __del__(self) -> None:
        address = self.allocator.alloc(40)
        ctypes_memset(address, 0x7E, 40)
        self.sink.append(address)


def ctypes_memset(address: int, byte: int, size: int) -> None:
    import ctypes

    ctypes.memset(address, byte, size)


def _garbage_then_map(allocator: pyslab.SlabAllocator, make_garbage: Callable[[], object]) -> None:
    """Make cyclic garbage, then allocate where no slab has room, many times.

    Mapping a slab creates tracked objects (the slab's record, ctypes' argument tuples) while
    the allocator holds its lock, so the collector can run right there and finalize the
    garbage inside the allocator's call. Whether a given collection starts inside the call or
    just before it depends on the collector's count, so the loop sweeps low thresholds and
    varies how many tracked objects are made first. ``reclaim`` keeps no empty slab, so the
    1024-byte class has no slab before each allocation.
    """
    alloc, free = allocator.alloc, allocator.free
    for threshold in range(1, 7):
        gc.set_threshold(threshold, 1, 1)
        for i in range(60):
            padding: list[list[int]] = [[] for _ in range(i % 5)]
            make_garbage()
            address = alloc(1024)
            free(address)
            del padding


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", CONFIGURATIONS)
def test_finalizers_that_free_during_an_allocation_are_deferred(
    eager_gc: None, spec: str
) -> None:
    names = [name for name in spec.split("+") if name != "reclaim"]
    with pyslab.SlabAllocator(policy=[*names, pyslab.make_policy("reclaim", keep=0)]) as allocator:
        _garbage_then_map(allocator, lambda: FreesOnFinalize(allocator, allocator.alloc(64)))
        gc.collect()
        stats = allocator.stats()
        assert stats.deferred_frees > 0, "no free was ever re-entrant: the test tests nothing"
        assert stats.live_blocks == 0
        assert allocator.deferred_errors == []
        allocator.validate()


@pytest.mark.timeout(60)
def test_finalizers_that_allocate_during_an_allocation_get_libc_blocks(eager_gc: None) -> None:
    sink: list[int] = []
    with pyslab.SlabAllocator(policy=["dict-lookup", pyslab.make_policy("reclaim", keep=0)]) as a:
        _garbage_then_map(a, lambda: AllocatesOnFinalize(a, sink))
        gc.collect()
        stats = a.stats()
        assert stats.reentrant_allocs > 0
        assert len(sink) == 6 * 60  # every finalizer ran and got a block
        assert stats.live_blocks == len(sink)
        import ctypes

        assert all(ctypes.string_at(p, 40) == b"\x7e" * 40 for p in sink)
        for address in sink:
            assert a.owns(address)
            a.free(address)
        a.validate()
        assert a.stats().live_blocks == 0


@pytest.mark.timeout(60)
# finalizers that run outside an allocator call raise at once: Python reports those itself
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_deferred_double_free_is_reported_not_lost(eager_gc: None) -> None:
    with pyslab.SlabAllocator(policy=pyslab.make_policy("reclaim", keep=0)) as allocator:
        guard = allocator.alloc(16)  # keeps the 16-byte slab mapped
        victim = allocator.alloc(16)
        allocator.free(victim)
        with pytest.warns(pyslab.PyslabWarning, match="double free"):
            _garbage_then_map(allocator, lambda: FreesOnFinalize(allocator, victim))
            gc.collect()
        assert allocator.deferred_errors
        assert isinstance(allocator.deferred_errors[0], pyslab.DoubleFreeError)
        allocator.free(guard)
        allocator.validate()

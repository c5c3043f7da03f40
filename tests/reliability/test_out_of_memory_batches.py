"""Out of memory in the batch calls, the re-entrant paths and the release of a slab.

- ``take_blocks`` (a magazine refill) swept as ``nomemory.py`` sweeps the public calls: it
  takes every block it asked for, or the ones it took before memory ran out (which the caller
  then holds), or raises ``MemoryError`` having taken none; a batch is never taken with nobody
  holding it. ``return_blocks`` of one block (how a magazine gives back a block it cannot
  cache) frees it or raises leaving it live; of many, memory running out stops it at a block:
  the ones before are freed, the rest are live and intact.
- A re-entrant ``free`` or ``alloc`` (made from a policy hook, as a finalizer would, while the
  heap is busy) with memory failing from every point on: the lock is released whatever
  happens, and the free is deferred or raises ``MemoryError`` with the block live; the alloc
  is served and recorded, or raises leaving nothing.
- Several policies told ``slab_removed`` in turn, one raising after another was told: those
  already told learn the slab is back, and the heap keeps it, consistent.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

import pyslab
from pyslab import Policy
from pyslab.core import MemorySlab, SizeClass
from tests.reliability.nomemory import AVAILABLE, Blocks, Changed, Scenario, SweepReport, sweep

needs_testcapi = pytest.mark.skipif(
    not AVAILABLE, reason="this CPython has no _testcapi.set_nomemory to inject failures"
)

_testcapi: Any = importlib.import_module("_testcapi") if AVAILABLE else None


def _check(report: SweepReport) -> None:
    print(f"{report.points} points swept, {report.failures} MemoryErrors checked")
    assert report.problems == []
    assert report.failures > 0


# --- take_blocks and return_blocks under the sweep -------------------------------------------


def _take(slot: int, held: int, count: int) -> Scenario:
    """``take_blocks`` of ``count`` blocks of the ``slot``-byte class, ``held`` of them live
    first (so that the batch spans a new slab when ``held`` nears a slab's worth)."""

    def prepare(blocks: Blocks) -> object:
        for _ in range(held):
            blocks.alloc(slot)
        size_class = blocks.heap.class_for(slot)
        assert size_class is not None and size_class.slot_size == slot
        return size_class

    def act(heap: pyslab.SlabAllocator, size_class: object, out: list[object]) -> None:
        out[0] = heap.take_blocks(size_class, count)  # type: ignore[arg-type]

    def after(blocks: Blocks, size_class: object, taken: object) -> Changed:
        assert isinstance(taken, list) and 0 < len(taken) <= count, taken
        assert len(set(taken)) == len(taken), "a block taken twice"
        return tuple((address, slot) for address in taken), ()

    return Scenario(f"take_blocks({slot}-byte class, {count}) with {held} live", prepare, act,
                    after)


def _return_one(blocks: Blocks) -> object:
    """Three blocks taken as a magazine takes them (slot starts, under any front end); the
    second to give back."""
    size_class = blocks.heap.class_for(64)
    assert size_class is not None
    made = blocks.heap.take_blocks(size_class, 3)
    for address in made:
        blocks.keep(address, size_class.slot_size)
    return [made[1]]


def _act_return(heap: pyslab.SlabAllocator, addresses: object, out: list[object]) -> None:
    heap.return_blocks(addresses)  # type: ignore[arg-type]


def _after_return(blocks: Blocks, addresses: object, _: object) -> Changed:
    assert isinstance(addresses, list)
    return (), tuple(addresses)


BATCHES = (
    _take(256, 12, 8),  # 16 slots a slab: the batch maps a slab half way
    _take(64, 3, 40),  # every length from 1 to 40 reached, over several lists made beforehand
    Scenario("return_blocks of one block", _return_one, _act_return, _after_return),
)


@needs_testcapi
@pytest.mark.timeout(300)
def test_batches_survive_every_failure() -> None:
    _check(sweep("dict-lookup+reclaim", BATCHES, limit=600))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", ["first-fit", "fullest-first+reclaim", "stats",
                                  "address-mask(region=4194304)+stats",
                                  "dict-lookup+reclaim+thread-cache"])
def test_batches_survive_every_failure_long(spec: str) -> None:
    # Not under debug: the batch calls are the core's, beneath debug's checks (a block given
    # back through them keeps the caller's bytes, which debug reports as a write after free).
    _check(sweep(spec, BATCHES, limit=3000))


@needs_testcapi
@pytest.mark.timeout(120)
def test_a_batch_return_that_runs_out_of_memory_frees_a_prefix() -> None:
    seen_partial = False
    for start in range(200):
        with pyslab.SlabAllocator(policy="dict-lookup+reclaim") as heap:
            blocks = Blocks(heap)
            batch = [blocks.alloc(size) for size in (24, 64, 5000, 24, 200, 64)]
            gc.collect()
            gc.disable()
            _testcapi.set_nomemory(start, 0)
            try:
                heap.return_blocks(batch)
            except BaseException as error:
                caught: BaseException | None = error
            else:
                caught = None
            _testcapi.remove_mem_hooks()
            gc.enable()
            heap.validate()
            live = [heap.owns(address) for address in batch]
            if caught is None:
                assert not any(live)
                return
            assert isinstance(caught, MemoryError), caught
            freed = live.index(True) if True in live else len(live)
            assert not any(live[:freed]) and all(live[freed:]), live
            seen_partial = seen_partial or freed > 0
            for address in batch[freed:]:
                size, byte = blocks.held[address]
                assert ctypes.string_at(address, size) == bytes([byte]) * size
            heap.return_blocks(batch[freed:])
            assert heap.stats().live_blocks == 0
    pytest.fail("the batch never completed")


# --- re-entrant calls with memory exhausted ---------------------------------------------------


class CallsInside(Policy):
    """From ``block_allocated``, once armed: make ``call`` with every Python allocation from
    the ``start``-th on failing, as a finalizer would run inside the allocator's call."""

    name = "calls-inside"
    description = "test mode: a call made from inside block_allocated, memory failing"

    def __init__(self) -> None:
        self.call: Callable[[], object] | None = None
        self.start = 0
        self.outcome: object = None

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        _testcapi.set_nomemory(self.start, 0)
        try:
            result = call()
        except BaseException as error:
            outcome: object = error
        else:
            outcome = result
        _testcapi.remove_mem_hooks()
        self.outcome = outcome


def _lock_is_free(heap: pyslab.SlabAllocator) -> bool:
    """True when another thread can take the allocator's lock."""
    got: list[bool] = []

    def probe() -> None:
        acquired = heap.lock.acquire(timeout=2)
        got.append(acquired)
        if acquired:
            heap.lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return got == [True]


def _reentrant_sweep(make: Callable[[pyslab.SlabAllocator, list[int]], Callable[[], object]],
                     check: Callable[[pyslab.SlabAllocator, list[int], object], None]) -> int:
    """For start = 0, 1, ...: arm the policy with ``make``'s call, allocate (the call runs
    inside), then check the lock and the heap. Returns the MemoryErrors seen."""
    errors = 0
    for start in range(60):
        policy = CallsInside()
        with pyslab.SlabAllocator(policy=["dict-lookup", policy]) as heap:
            held = [heap.alloc(48) for _ in range(3)]
            ctypes.memset(held[1], 0x5A, 48)
            policy.call, policy.start = make(heap, held), start
            gc.collect()
            gc.disable()
            held.append(heap.alloc(48))  # the call runs inside this one
            gc.enable()
            assert _lock_is_free(heap), f"start {start}: the lock stayed held ({policy.outcome!r})"
            heap.validate()
            check(heap, held, policy.outcome)
            if isinstance(policy.outcome, MemoryError):
                errors += 1
            elif isinstance(policy.outcome, BaseException):
                raise AssertionError(f"start {start}: {policy.outcome!r}")
            else:
                return errors
    pytest.fail("the re-entrant call never succeeded")


@needs_testcapi
@pytest.mark.timeout(120)
def test_a_reentrant_free_out_of_memory_releases_the_lock_and_keeps_the_block() -> None:
    def make(heap: pyslab.SlabAllocator, held: list[int]) -> Callable[[], object]:
        return lambda: heap.free(held[1])

    def check(heap: pyslab.SlabAllocator, held: list[int], outcome: object) -> None:
        if isinstance(outcome, MemoryError):
            assert heap.owns(held[1]) and ctypes.string_at(held[1], 48) == b"\x5a" * 48
            assert heap.stats().live_blocks == 4 and heap.stats().deferred_frees == 0
        else:  # deferred, then carried out when the outer alloc ended
            assert not heap.owns(held[1])
            assert heap.stats().live_blocks == 3 and heap.stats().deferred_frees == 1

    assert _reentrant_sweep(make, check) > 0


@needs_testcapi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [24, 5000])
def test_a_reentrant_alloc_out_of_memory_releases_the_lock_and_leaves_nothing(size: int) -> None:
    made: list[object] = []

    def make(heap: pyslab.SlabAllocator, held: list[int]) -> Callable[[], object]:
        return lambda: heap.alloc(size)

    def check(heap: pyslab.SlabAllocator, held: list[int], outcome: object) -> None:
        stats = heap.stats()
        if isinstance(outcome, MemoryError):
            assert stats.live_blocks == 4 and stats.reentrant_allocs == 0
        else:  # served by libc, recorded when the outer alloc ended
            assert isinstance(outcome, int) and heap.owns(outcome)
            assert stats.live_blocks == 5 and stats.reentrant_allocs == 1
            made.append(outcome)
            heap.free(outcome)

    assert _reentrant_sweep(make, check) > 0
    assert made


# --- several policies told that a slab goes -------------------------------------------------


class RefusesRemoval(Policy):
    """Keeps its own index of slabs; its ``slab_removed`` raises ``MemoryError`` (changing
    nothing) while ``refusing``."""

    name = "refuses-removal"
    description = "test mode: a slab_removed that runs out of memory"

    def __init__(self) -> None:
        self.refusing = False
        self.slabs: set[MemorySlab] = set()

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        self.slabs.add(slab)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        if self.refusing:
            raise MemoryError("test: no memory to forget the slab")
        self.slabs.remove(slab)

    def check(self) -> None:
        every = {slab for size_class in self.heap.size_classes for slab in size_class.slabs}
        assert self.slabs == every, "the test policy's slabs differ from the heap's"


@pytest.mark.parametrize("first", [True, False], ids=["refusing-first", "refusing-last"])
@pytest.mark.parametrize("how", ["free", "shrink"])
def test_a_slab_removal_refused_by_one_policy_is_undone_for_the_others(
    first: bool, how: str
) -> None:
    refusing = RefusesRemoval()
    names: list[str | Policy] = ["dict-lookup", "reclaim(keep=0)" if how == "free" else "stats"]
    policies = [refusing, *names] if first else [*names, refusing]
    with pyslab.SlabAllocator(policy=policies) as heap:
        blocks = Blocks(heap)
        slot = heap.size_classes[4].slot_size
        made = [blocks.alloc(slot) for _ in range(heap.size_classes[4].slots_per_slab + 1)]
        refusing.refusing = True
        heap.free(made[-1])  # empties the second slab: released at once, or kept for shrink
        del blocks.held[made[-1]]
        if how == "shrink":
            with pytest.raises(MemoryError):
                heap.shrink()
        heap.validate()  # every index still lists the slab the heap keeps
        assert len(heap.size_classes[4].slabs) == 2
        assert blocks.intact() == []
        refusing.refusing = False
        again = heap.alloc(slot)  # from the kept slab: its owner is found
        heap.free(again)
        heap.shrink()
        heap.validate()
        assert len(heap.size_classes[4].slabs) == 1
        for address in made[:-1]:
            heap.free(address)
        heap.validate()


# --- settling the backlog with memory exhausted -----------------------------------------------


class DefersThenStarves(Policy):
    """From ``block_allocated``, once armed: free ``victim`` (deferred: the heap is busy), then
    make every Python allocation from the ``start``-th on fail, for the rest of the outer call:
    its settling of the backlog runs out of memory."""

    name = "defers-then-starves"
    description = "test mode: a deferred free, then memory failing for the outer call's end"

    def __init__(self) -> None:
        self.victim = 0
        self.start = 0

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        victim, self.victim = self.victim, 0
        if victim:
            self.heap.free(victim)  # type: ignore[attr-defined]
            _testcapi.set_nomemory(self.start, 0)


@needs_testcapi
@pytest.mark.timeout(120)
def test_settling_a_deferred_free_out_of_memory_loses_neither_the_call_nor_the_free() -> None:
    # The outer alloc has taken its block when it settles the backlog: running out of memory
    # there must neither turn its success into an error (the block would have nobody) nor
    # drop the deferred free (its block would stay live for good). The free stays pending,
    # and the next call carries it out.
    for start in range(40):
        policy = DefersThenStarves()
        with pyslab.SlabAllocator(policy=["dict-lookup", policy]) as heap:
            held = [heap.alloc(48) for _ in range(3)]
            policy.victim, policy.start = held[1], start
            gc.collect()
            gc.disable()
            try:
                address = heap.alloc(48)
            except BaseException as error:
                outcome: object = error
            else:
                outcome = address
            finally:
                _testcapi.remove_mem_hooks()
                gc.enable()
            assert isinstance(outcome, int), f"start {start}: the alloc raised {outcome!r}"
            heap.free(heap.alloc(24))  # settles what is pending
            heap.validate()
            assert heap.owns(outcome), f"start {start}: the new block is not live"
            assert not heap.owns(held[1]), f"start {start}: the deferred free was lost"
            assert heap.stats().live_blocks == 3
            assert heap.stats().deferred_frees == 1

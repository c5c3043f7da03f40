"""thread-cache: per-thread magazines, cross-thread frees, thread exit, flush and close."""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Iterator

import pytest

import pyslab
from tests.support import FRONT_END_CONFIGURATIONS, block_intact, fill_block, snapshot


@pytest.fixture(params=FRONT_END_CONFIGURATIONS)
def cached(request: pytest.FixtureRequest) -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator(policy=request.param) as alloc:
        yield alloc
        alloc.validate()


def _run_in_thread(work: object) -> None:
    thread = threading.Thread(target=work)  # type: ignore[arg-type]
    thread.start()
    thread.join()
    gc.collect()  # the thread's local storage, and its magazines, are gone


def test_a_freed_block_is_served_again_from_the_magazine(cached: pyslab.SlabAllocator) -> None:
    first = cached.alloc(64)
    cached.free(first)
    stats = cached.stats().classes[3]
    assert stats.cached_slots >= 1 and stats.used_slots > 0
    assert cached.stats().live_blocks == 0
    assert cached.alloc(64) == first
    cached.free(first)


def test_magazines_are_bounded(cached: pyslab.SlabAllocator) -> None:
    blocks = [cached.alloc(32) for _ in range(1000)]
    for address in blocks:
        cached.free(address)
    assert cached.stats().classes[2].cached_slots <= 64


def test_double_free_of_a_cached_block_is_refused(cached: pyslab.SlabAllocator) -> None:
    address = cached.alloc(16)
    keep = cached.alloc(16)
    fill_block(keep, 16, 0x33)
    cached.free(address)
    before = snapshot(cached, {keep: 16})
    with pytest.raises(pyslab.DoubleFreeError, match=f"{address:#x}"):
        cached.free(address)
    with pytest.raises(pyslab.DoubleFreeError):
        cached.usable_size(address)
    assert not cached.owns(address)
    assert snapshot(cached, {keep: 16}) == before
    cached.free(keep)


def test_a_double_free_on_another_thread_is_refused(cached: pyslab.SlabAllocator) -> None:
    address = cached.alloc(128)
    cached.free(address)  # now in this thread's magazine
    errors: list[BaseException] = []

    def free_again() -> None:
        try:
            cached.free(address)
        except pyslab.DoubleFreeError as error:
            errors.append(error)

    _run_in_thread(free_again)
    assert len(errors) == 1


@pytest.mark.parametrize(
    ("address", "error"), [(8, pyslab.InvalidFreeError), (-8, pyslab.InvalidFreeError)]
)
def test_foreign_addresses_reach_the_core_and_its_errors(
    cached: pyslab.SlabAllocator, address: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        cached.free(address)


def test_interior_pointers_are_refused(cached: pyslab.SlabAllocator) -> None:
    address = cached.alloc(64)
    with pytest.raises(pyslab.InvalidFreeError, match="inside the slot"):
        cached.free(address + 8)
    cached.free(address)


def test_a_thread_that_exits_gives_its_blocks_back(cached: pyslab.SlabAllocator) -> None:
    def churn() -> None:
        blocks = [cached.alloc(256) for _ in range(40)]
        for address in blocks:
            cached.free(address)
        assert cached.stats().classes[5].cached_slots > 0

    _run_in_thread(churn)
    stats = cached.stats().classes[5]
    assert stats.cached_slots == 0 and stats.used_slots == 0


def test_blocks_freed_on_other_threads_than_their_allocators(
    cached: pyslab.SlabAllocator,
) -> None:
    handoff: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    failures: list[str] = []

    def producer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(1500):
            size = rng.choice([8, 40, 64, 200, 1000])
            address = cached.alloc(size)
            fill_block(address, size, seed + 1)
            with lock:
                handoff.append((address, size, seed + 1))

    def consumer(seed: int) -> None:
        freed = 0
        while freed < 1500:
            with lock:
                item = handoff.pop() if handoff else None
            if item is None:
                continue
            address, size, byte = item
            if not block_intact(address, size, byte):
                failures.append(f"{address:#x} lost its pattern")
            cached.free(address)
            freed += 1

    threads = [threading.Thread(target=producer, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=consumer, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert failures == []
    cached.validate()
    assert cached.stats().live_blocks == 0


def test_threads_keep_every_pattern_intact(cached: pyslab.SlabAllocator) -> None:
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[int, int, int]] = []
        for step in range(2500):
            if mine and rng.random() < 0.45:
                address, size, byte = mine.pop(rng.randrange(len(mine)))
                if not block_intact(address, size, byte):
                    failures.append(f"{address:#x} overwritten")
                cached.free(address)
            else:
                size = rng.choice([8, 16, 48, 64, 256, 1024, 5000])
                address = cached.alloc(size)
                byte = (seed * 7 + step) % 255 + 1
                fill_block(address, size, byte)
                mine.append((address, size, byte))
        for address, _, _ in mine:
            cached.free(address)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert failures == []
    assert cached.stats().live_blocks == 0


def test_shrink_and_close_account_for_every_cache() -> None:
    cache = pyslab.make_policy("thread-cache", magazine=8, batch=4)
    alloc = pyslab.SlabAllocator(policy=[cache, "reclaim"])
    holder_ready = threading.Event()
    finish = threading.Event()

    def hold_a_cache() -> None:
        for address in [alloc.alloc(512) for _ in range(8)]:
            alloc.free(address)
        holder_ready.set()
        finish.wait(10)

    holder = threading.Thread(target=hold_a_cache)
    holder.start()
    holder_ready.wait()
    for address in [alloc.alloc(512) for _ in range(8)]:
        alloc.free(address)
    assert alloc.stats().classes[6].cached_slots == 16  # eight in each thread's magazine
    alloc.shrink()
    assert alloc.stats().classes[6].cached_slots == 0
    assert alloc.stats().mapped_bytes == 0
    for address in [alloc.alloc(64) for _ in range(8)]:
        alloc.free(address)
    alloc.close()
    assert alloc.page_source.mapped_bytes == 0
    finish.set()
    holder.join()


def test_swapping_the_policy_away_returns_the_cached_blocks() -> None:
    with pyslab.SlabAllocator(policy="thread-cache") as alloc:
        for address in [alloc.alloc(8) for _ in range(50)]:
            alloc.free(address)
        alloc.set_policy("dict-lookup")
        assert alloc.stats().classes[0].used_slots == 0
        alloc.validate()


@pytest.mark.parametrize(
    ("params", "error"),
    [({"magazine": 0}, ValueError), ({"magazine": "8"}, TypeError),
     ({"magazine": 8, "batch": 9}, ValueError), ({"batch": 0}, ValueError)],
)
def test_bad_parameters_are_named(params: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        pyslab.make_policy("thread-cache", **params)

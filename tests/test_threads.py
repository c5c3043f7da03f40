"""Many real threads at once, and fork while another thread holds the lock."""

from __future__ import annotations

import os
import random
import threading

import pytest

import pyslab
from tests.support import block_intact, fill_block


def test_threads_allocate_and_free_without_losing_a_byte(
    allocator: pyslab.SlabAllocator,
) -> None:
    failures: list[str] = []
    start = threading.Barrier(6)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[int, int, int]] = []
        start.wait()
        for step in range(3000):
            if mine and rng.random() < 0.45:
                address, size, byte = mine.pop(rng.randrange(len(mine)))
                if not block_intact(address, size, byte):
                    failures.append(f"thread {seed}: block {address:#x} overwritten")
                allocator.free(address)
            else:
                size = rng.choice([8, 16, 24, 64, 100, 256, 700, 1024, 3000])
                address = allocator.alloc(size)
                byte = (seed * 31 + step) % 255 + 1
                fill_block(address, size, byte)
                mine.append((address, size, byte))
        for address, size, byte in mine:
            if not block_intact(address, size, byte):
                failures.append(f"thread {seed}: block {address:#x} overwritten")
            allocator.free(address)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert allocator.stats().live_blocks == 0
    allocator.validate()


def test_blocks_freed_by_another_thread(allocator: pyslab.SlabAllocator) -> None:
    handoff: list[int] = []
    ready = threading.Event()

    def producer() -> None:
        handoff.extend(allocator.alloc(48) for _ in range(2000))
        ready.set()

    def consumer() -> None:
        ready.wait()
        for address in handoff:
            allocator.free(address)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allocator.stats().live_blocks == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads alive
def test_fork_while_another_thread_holds_the_lock() -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        kept = alloc.alloc(64)
        fill_block(kept, 64, 0x42)
        holding = threading.Event()
        release = threading.Event()

        def hold_the_lock() -> None:
            with alloc._lock:
                holding.set()
                release.wait(5)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        holding.wait()
        # fork blocks in the before-fork handler until the holder lets go
        threading.Timer(0.2, release.set).start()
        pid = os.fork()
        if pid == 0:  # child: one thread, a fresh lock, a consistent heap
            try:
                blocks = [alloc.alloc(size) for size in (8, 64, 1000, 5000)]
                for address in blocks:
                    alloc.free(address)
                alloc.validate()
                os._exit(0 if block_intact(kept, 64, 0x42) else 3)
            except BaseException:
                os._exit(4)
        holder.join()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        alloc.free(alloc.alloc(8))
        alloc.free(kept)

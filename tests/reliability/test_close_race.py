"""A call that starts before ``close()`` and runs after it raises AllocatorClosedError and
changes nothing: real threads, one of them blocked on the allocator's lock while close runs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import pyslab

CONFIGS = ("first-fit", "dict-lookup+reclaim", "fullest-first+reclaim", "address-mask+reclaim",
           "dict-lookup+stats")

CALLS: dict[str, Callable[[pyslab.SlabAllocator, int], object]] = {
    "alloc": lambda heap, _: heap.alloc(24),
    "alloc of a new size class": lambda heap, _: heap.alloc(700),
    "large alloc": lambda heap, _: heap.alloc(100_000),
    "calloc": lambda heap, _: heap.calloc(4, 8),
    "realloc": lambda heap, block: heap.realloc(block, 500),
    "free": lambda heap, block: heap.free(block),
    "set_policy": lambda heap, _: heap.set_policy("dict-lookup"),
    "shrink": lambda heap, _: heap.shrink(),
    "take_blocks": lambda heap, _: heap.take_blocks(heap.size_classes[2], 4),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", CONFIGS)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_call_blocked_while_close_runs_raises_closed_and_changes_nothing(
    spec: str, call: str
) -> None:
    heap = pyslab.SlabAllocator(policy=spec)
    block = heap.alloc(24)
    outcome: list[BaseException | object] = []
    started = threading.Event()

    def racer() -> None:
        started.set()
        try:
            outcome.append(CALLS[call](heap, block))
        except BaseException as error:
            outcome.append(error)

    heap.lock.acquire()  # the racer blocks on it, inside its call, until close has run
    thread = threading.Thread(target=racer)
    thread.start()
    started.wait()
    while not _waiting_on_lock(thread):
        pass
    heap.close()  # the lock is re-entrant: this thread holds it
    heap.lock.release()
    thread.join(30)
    assert not thread.is_alive()
    (result,) = outcome
    assert isinstance(result, pyslab.AllocatorClosedError), repr(result)
    stats = heap.stats()
    assert stats.slabs == 0 and stats.mapped_bytes == 0 and stats.large_blocks == 0
    assert heap.slabs() == []
    heap.validate()


def _waiting_on_lock(thread: threading.Thread) -> bool:
    """True once ``thread`` has had time to reach the lock (it is alive and not running)."""
    thread.join(0.05)
    return thread.is_alive()

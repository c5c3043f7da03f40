"""``producer-consumer``: blocks allocated on producer threads and freed on consumer threads."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from typing import Final

from pyslab.lab import Workload, WorkloadHeap

from ._sizes import program_size

_POLL: Final = 0.05  # seconds between checks that no other thread has failed


class _Aborted(Exception):
    """Another thread of the workload failed: stop quietly (its error is raised)."""


class ProducerConsumer(Workload):
    """``producers`` threads allocate program-shaped blocks and pass their ids through a bounded
    queue to ``consumers`` threads, which free them: every block is freed on another thread
    than the one that allocated it, while the others allocate.

    Each producer's sizes are fixed by the seed; which consumer frees which block, and the
    interleaving of all calls, are the scheduler's. The queue holds at most ``depth`` blocks,
    which bounds the live set. Nothing is live at the end.
    """

    name = "producer-consumer"
    description = "2 producer threads allocate, 2 consumer threads free: cross-thread frees"
    threads = 4

    def __init__(self, producers: int = 2, consumers: int = 2, depth: int = 512) -> None:
        for what, value in (("producers", producers), ("consumers", consumers), ("depth", depth)):
            if type(value) is not int or value <= 0:
                raise ValueError(f"{what} must be a positive int, not {value!r}")
        self.producers = producers
        self.consumers = consumers
        self.depth = depth

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Run the threads to completion; re-raise the first error of any of them.

        Complexity: O(ops) calls, spread over the threads.
        """
        blocks: queue.Queue[int | None] = queue.Queue(self.depth)
        failed = threading.Event()
        errors: list[BaseException] = []
        per_producer = max(1, ops // 2 // self.producers)

        def put(item: int | None) -> None:
            while True:
                try:
                    blocks.put(item, timeout=_POLL)
                    return
                except queue.Full:
                    if failed.is_set():
                        raise _Aborted from None

        def produce(index: int) -> None:
            rng = random.Random(seed * 65_537 + index)
            for _ in range(per_producer):
                put(heap.alloc(program_size(rng)))

        def consume() -> None:
            while True:
                try:
                    block = blocks.get(timeout=_POLL)
                except queue.Empty:
                    if failed.is_set():
                        raise _Aborted from None
                    continue
                if block is None:
                    return
                heap.free(block)

        def guarded(body: Callable[..., None], *args: int) -> threading.Thread:
            def target() -> None:
                try:
                    body(*args)
                except _Aborted:
                    pass
                except BaseException as error:
                    errors.append(error)
                    failed.set()

            return threading.Thread(target=target, name=f"{self.name}-{body.__name__}")

        producers = [guarded(produce, i) for i in range(self.producers)]
        consumers = [guarded(consume) for _ in range(self.consumers)]
        for thread in producers + consumers:
            thread.start()
        for thread in producers:
            thread.join()
        if not failed.is_set():
            for _ in consumers:
                try:
                    put(None)
                except _Aborted:
                    break
        for thread in consumers:
            thread.join()
        if errors:
            raise errors[0]

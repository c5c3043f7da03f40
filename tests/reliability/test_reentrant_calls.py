"""Re-entrant calls from every kind of finalizer and from a signal handler, on real threads.

``gc.set_threshold(1)`` makes the collector start at nearly every allocation of a tracked
object, including the ones the allocator itself makes while it holds its lock (a new slab's
record, ctypes' argument tuples). The finalizers of the garbage then run inside the allocator's
call: ``__del__`` methods, ``weakref.finalize`` callbacks and ``gc.callbacks`` hooks, each of
which frees and allocates slab and large blocks. ``signal.setitimer`` delivers ``SIGALRM`` to the
main thread every few hundred microseconds; its handler allocates and frees too.

Pass: no deadlock (every test has a timeout), every block keeps its pattern, every deferred
free is completed by the time the outer call returns (``validate()`` checks the backlog is
empty, ``deferred_errors`` stays empty, live counts end at zero), and the counters show that
the re-entrant paths were really taken.
"""

from __future__ import annotations

import gc
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import pyslab
from tests.support import CONFIGURATIONS, block_intact, fill_block, pattern_byte

SIZES = (8, 16, 24, 48, 64, 100, 200, 256, 400, 512, 700, 1024, 3000, 70_000)
"""Every class of the default layout, sizes inside classes, and the large fallback."""


@dataclass
class Ledger:
    """Blocks made by finalizers and handlers, and what ran; checked by the tests."""

    allocator: pyslab.SlabAllocator
    kept: dict[int, tuple[int, int]] = field(default_factory=dict)
    """address -> (size, pattern byte) of blocks a finalizer allocated and kept."""
    log: list[str] = field(default_factory=list)
    """Who ran, one entry per run: ``list.append`` is atomic even for nested handlers."""
    corrupt: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def churn(self, who: str, address: int, size: int, byte: int) -> None:
        """Check and free a block, then allocate one to keep and one to free at once."""
        try:
            if not block_intact(address, size, byte):
                self.corrupt.append(f"{who}: {address:#x} lost its pattern")
            self.allocator.free(address)
            self.log.append(who)
            n = len(self.log)
            keep_size = SIZES[n % len(SIZES)]
            kept = self.allocator.alloc(keep_size)
            fill_block(kept, keep_size, pattern_byte(n))
            self.kept[kept] = (keep_size, pattern_byte(n))
            self.allocator.free(self.allocator.alloc(SIZES[(n + 5) % len(SIZES)]))
        except BaseException as error:  # a finalizer cannot raise: the test checks this list
            self.errors.append(error)

    @property
    def ran(self) -> Counter[str]:
        """How many times each kind of finalizer or handler ran."""
        return Counter(self.log)

    def settle(self) -> None:
        """Check and free every kept block."""
        for address, (size, byte) in list(self.kept.items()):
            if not block_intact(address, size, byte):
                self.corrupt.append(f"kept block {address:#x} lost its pattern")
            self.allocator.free(address)
        self.kept.clear()


class DelFrees:
    """Cyclic garbage whose ``__del__`` churns a block: only the cycle collector frees it."""

    def __init__(self, ledger: Ledger, size: int, byte: int) -> None:
        self.ledger = ledger
        self.size = size
        self.byte = byte
        self.address = ledger.allocator.alloc(size)
        fill_block(self.address, size, byte)
        self.cycle = self

    def __del__(self) -> None:
        self.ledger.churn("__del__", self.address, self.size, self.byte)


class Node:
    """Plain cyclic garbage, watched by ``weakref.finalize``."""

    def __init__(self) -> None:
        self.cycle = self


def _finalized_node(ledger: Ledger, size: int, byte: int) -> None:
    address = ledger.allocator.alloc(size)
    fill_block(address, size, byte)
    weakref.finalize(Node(), ledger.churn, "weakref.finalize", address, size, byte)


@pytest.fixture
def ledger(request: pytest.FixtureRequest, eager_gc: None) -> Iterator[Ledger]:
    spec = getattr(request, "param", "dict-lookup+reclaim")
    with pyslab.SlabAllocator(policy=spec) as allocator:
        book = Ledger(allocator)
        yield book
        book.settle()
        assert book.errors == [] and book.corrupt == []
        assert allocator.deferred_errors == []
        allocator.validate()
        assert allocator.stats().live_blocks == 0


def _workload(ledger: Ledger, steps: int) -> list[tuple[int, int, int]]:
    """Allocate and free blocks of every size while making garbage; return the survivors."""
    allocator = ledger.allocator
    live: list[tuple[int, int, int]] = []
    for step in range(steps):
        size = SIZES[step % len(SIZES)]
        byte = pattern_byte(step)
        if step % 3 == 0:
            DelFrees(ledger, size, byte)
        elif step % 3 == 1:
            _finalized_node(ledger, size, byte)
        address = allocator.alloc(size)
        fill_block(address, size, byte)
        live.append((address, size, byte))
        if step % 2:
            address, size, byte = live.pop(step * 7 % len(live))
            assert block_intact(address, size, byte)
            allocator.free(address)
    return live


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ledger", CONFIGURATIONS, indirect=True)
def test_finalizers_free_and_allocate_inside_allocator_calls(ledger: Ledger) -> None:
    allocator = ledger.allocator

    collections = 0

    def on_collection(phase: str, info: dict[str, int]) -> None:
        # Every 16th collection only: settling a backlog makes tracked objects, so with
        # threshold 1 a callback that added work at every collection would feed the backlog
        # as fast as the allocator settles it.
        nonlocal collections
        if phase != "start":
            return
        collections += 1
        if collections % 16 == 0:
            n = collections
            size = SIZES[n % len(SIZES)]
            address = allocator.alloc(size)
            fill_block(address, size, pattern_byte(n))
            ledger.churn("gc.callbacks", address, size, pattern_byte(n))

    gc.callbacks.append(on_collection)
    try:
        gc.set_threshold(1, 1, 1)
        live = _workload(ledger, 1500)
    finally:
        gc.callbacks.remove(on_collection)
        gc.set_threshold(700, 10, 10)
    gc.collect()
    for address, size, byte in live:
        assert block_intact(address, size, byte)
        allocator.free(address)
    stats = allocator.stats()
    assert set(ledger.ran) == {"__del__", "weakref.finalize", "gc.callbacks"}
    assert ledger.ran["__del__"] == 500 and ledger.ran["weakref.finalize"] == 500
    # the collections really started inside allocator calls, and took the re-entrant paths
    assert stats.deferred_frees > 0
    assert stats.reentrant_allocs > 0


@pytest.mark.timeout(60)
def test_finalizers_on_many_threads_at_once(ledger: Ledger) -> None:
    """Collections start on whichever thread allocates: finalizers run on every thread.

    Whether a collection starts inside an allocator call, rather than just before one, depends
    on the collector's count and the scheduler, so rounds with different thresholds run until
    one has (at most five rounds), and every round is checked in full.
    """
    failures: list[BaseException] = []
    rounds = 0
    while rounds < 5 and (rounds == 0 or ledger.allocator.stats().deferred_frees == 0):
        gc.set_threshold(5 - rounds, 1, 1)
        rounds += 1
        start = threading.Barrier(4)

        def worker(barrier: threading.Barrier = start) -> None:
            try:
                barrier.wait()
                for address, size, byte in _workload(ledger, 600):
                    assert block_intact(address, size, byte)
                    ledger.allocator.free(address)
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gc.collect()
        assert failures == []
        assert ledger.ran["__del__"] == rounds * 4 * 200
        assert ledger.ran["weakref.finalize"] == rounds * 4 * 200
    assert ledger.allocator.stats().deferred_frees > 0


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("ledger", ["first-fit", "dict-lookup+reclaim"], indirect=True)
def test_a_signal_handler_allocates_and_frees_inside_allocator_calls(ledger: Ledger) -> None:
    """SIGALRM every 200 us; the handler runs between bytecodes of the main thread, often in
    the middle of an allocator call. A second thread allocates meanwhile, so the handler also
    finds the lock held by another thread (it must wait, not deadlock)."""
    allocator = ledger.allocator
    handled = 0

    def handler(signum: int, frame: object) -> None:
        # Handlers nest (another SIGALRM can run this one again at any call): every value
        # used after a call is a local.
        nonlocal handled
        handled += 1
        n = handled
        size = SIZES[n % len(SIZES)]
        address = allocator.alloc(size)
        fill_block(address, size, pattern_byte(n))
        ledger.churn("signal", address, size, pattern_byte(n))

    stop = threading.Event()

    def other_thread() -> None:
        while not stop.is_set():
            allocator.free(allocator.alloc(64))

    old = signal.signal(signal.SIGALRM, handler)
    helper = threading.Thread(target=other_thread)
    helper.start()
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        # bounded by operations, not time: stop once the re-entrant path was hit often enough
        for _ in range(200):
            for address, size, byte in _workload(ledger, 60):
                assert block_intact(address, size, byte)
                allocator.free(address)
            if allocator.stats().reentrant_allocs >= 10:  # a query the handler may interrupt
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        helper.join()
    gc.collect()
    assert handled > 0 and ledger.ran["signal"] == handled
    assert allocator.stats().reentrant_allocs >= 10, "the handler hardly ever interrupted a call"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("query", ["stats", "slabs", "validate", "owns", "usable_size", "realloc"])
@pytest.mark.parametrize("spec", ["first-fit", "dict-lookup"])
def test_queries_survive_a_signal_handler_that_allocates(spec: str, query: str) -> None:
    """The handler maps a new 1024-byte slab at every signal while the main thread queries."""
    with pyslab.SlabAllocator(policy=spec) as allocator:
        kept: list[int] = []
        handled = 0

        def handler(signum: int, frame: object) -> None:
            nonlocal handled
            handled += 1
            kept.extend(allocator.alloc(1000) for _ in range(4))

        block = allocator.alloc(1000)
        calls: dict[str, Callable[[], object]] = {
            "stats": allocator.stats,
            "slabs": allocator.slabs,
            "validate": allocator.validate,
            "owns": lambda: allocator.owns(block),
            "usable_size": lambda: allocator.usable_size(block),
            "realloc": lambda: allocator.realloc(block, 900),
        }
        call = calls[query]
        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        try:
            while handled < 400:  # bounded by signals delivered, not by time
                call()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        allocator.validate()
        assert allocator.stats().live_blocks == len(kept) + 1
        for address in [*kept, block]:
            allocator.free(address)


class Interrupt(Exception):
    """What a signal handler raises, as ``KeyboardInterrupt`` does on Ctrl-C."""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("spec", ["first-fit", "dict-lookup+reclaim"])
def test_an_exception_from_a_signal_handler_mid_call_leaves_the_heap_valid(spec: str) -> None:
    """SIGALRM every 100 us raises; after each interruption the heap must still be valid.

    The handler raises only while armed, and disarms itself: so the exception comes from
    inside an allocator call (or the line around it), never from the test's own checks.
    """
    with pyslab.SlabAllocator(policy=spec) as allocator:
        live: list[int] = []
        interrupted = 0
        problem = ""
        armed = [False]

        def handler(signum: int, frame: object) -> None:
            if armed[0]:
                armed[0] = False
                raise Interrupt()

        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        try:
            for step in range(100_000):  # bounded by operations and interruptions
                try:
                    armed[0] = True
                    if live and step % 2:
                        allocator.free(live.pop(step * 7 % len(live)))
                    else:
                        live.append(allocator.alloc(SIZES[step % len(SIZES)]))
                    armed[0] = False
                except Interrupt:  # a block may leak (not a corruption): the heap must hold
                    interrupted += 1
                    try:
                        allocator.validate()
                    except pyslab.CorruptionError as error:
                        problem = str(error)
                    if problem or interrupted >= 300:
                        break
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        assert interrupted > 0
        assert problem == ""

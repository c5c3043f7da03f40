"""The front ends (``thread-cache``, ``debug``) under real concurrency.

- Two threads free one block at the same moment (lined up by a barrier): exactly one free
  succeeds, the other raises ``DoubleFreeError``, and no block is lost or handed out twice.
- ``set_policy`` adds and removes ``thread-cache`` while eight threads allocate and free: every
  block of every thread is accounted for across the switches.
- ``fork()`` while threads allocate through ``thread-cache``: the child finds a consistent
  cache (``validate()`` passes) and can allocate, free, shrink and close.
- A ``SIGALRM`` handler allocates every 100 µs under ``debug``: the first allocation of a new
  alignment completes, and a healthy heap reports no corruption. The same handler, and
  finalizers run by the collector inside the front ends' calls, leave ``thread-cache``
  consistent.
- Threads that C created call ``pyslab.c_functions(heap)``: each keeps its magazines across its
  calls (ctypes gives it a new Python thread state per call), and the blocks of a thread that
  is gone go back to the heap.

Each runs bounded in CI; ``PYSLAB_LONG=1`` runs the long variants (more trials, forks,
switches and operations).
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyslab
from pyslab.interop.cabi import CALLOC_FUNC, FREE_FUNC, MALLOC_FUNC, REALLOC_FUNC
from tests.reliability.conftest import LONG
from tests.reliability.forking import _child_work, _populated, _wait
from tests.reliability.test_c_abi import _in_c_threads
from tests.reliability.test_reentrant_calls import Ledger, _workload
from tests.support import block_intact, fill_block, pattern_byte

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SIZES = (8, 16, 24, 48, 64, 100, 200, 256, 400, 512, 700, 1024)
"""Every class of the default layout, and sizes inside classes."""


@pytest.fixture
def unraisable() -> Iterator[list[str]]:
    """Every exception Python could not raise ("Exception ignored in ..."), as text."""
    caught: list[str] = []
    previous = sys.unraisablehook

    def hook(report: Any) -> None:
        caught.append(f"{report.exc_type.__name__}: {report.exc_value} in {report.object!r}")

    sys.unraisablehook = hook
    try:
        yield caught
    finally:
        sys.unraisablehook = previous


def _assert_nothing_lost(heap: pyslab.SlabAllocator) -> None:
    """No block is live (every caller freed every block) and the heap is consistent."""
    gc.collect()  # exited threads' local storage, and with it their magazines
    heap.validate()
    stats = heap.stats()
    assert stats.live_blocks == 0, f"{stats.live_blocks} blocks live with no owner"


# --- two frees of one block at once ---------------------------------------------------------


def _free_in(heap: pyslab.SlabAllocator, ptr: Callable[[], int], barrier: threading.Barrier,
             outcomes: list[str]) -> None:
    """Wait at ``barrier``, then free the block ``ptr()`` names; note how it went."""
    barrier.wait()
    try:
        heap.free(ptr())
    except pyslab.DoubleFreeError:
        outcomes.append("refused")
    except BaseException as error:  # anything else is a failure, reported by the test
        outcomes.append(repr(error))
    else:
        outcomes.append("freed")


def _race_on_fresh_threads(heap: pyslab.SlabAllocator, trials: int) -> Counter[tuple[str, ...]]:
    """Per trial: one block, two new threads lined up by a barrier, both free it."""
    seen: Counter[tuple[str, ...]] = Counter()
    for trial in range(trials):
        ptr = heap.alloc(SIZES[trial % len(SIZES)])
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_free_in, args=(heap, lambda ptr=ptr: ptr, barrier, outcomes))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen[tuple(sorted(outcomes))] += 1
    return seen


def _race_on_two_threads(heap: pyslab.SlabAllocator, trials: int) -> Counter[tuple[str, ...]]:
    """The same race on two long-lived threads, whose magazines fill, spill and refill."""
    seen: Counter[tuple[str, ...]] = Counter()
    start, freed, done = threading.Barrier(3), threading.Barrier(2), threading.Barrier(3)
    current = [0]
    outcomes: list[str] = []

    def racer(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[int] = []
        try:
            for _ in range(trials):
                # The start barrier lines the two frees up; the freed barrier keeps either
                # thread from allocating (maybe that very block) before both have freed.
                _free_in(heap, lambda: current[0], start, outcomes)
                freed.wait()
                # churn this thread's magazines between races: refills and overflows
                for _ in range(rng.randrange(4)):
                    mine.append(heap.alloc(SIZES[rng.randrange(len(SIZES))]))
                while len(mine) > 40 or (mine and rng.random() < 0.3):
                    heap.free(mine.pop(rng.randrange(len(mine))))
                done.wait()
            for address in mine:
                heap.free(address)
        except threading.BrokenBarrierError:
            pass
        except BaseException as error:  # reported by the test; the others stop waiting
            outcomes.append(repr(error))
            for barrier in (start, freed, done):
                barrier.abort()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        for trial in range(trials):
            current[0] = heap.alloc(SIZES[trial % len(SIZES)])
            outcomes.clear()
            start.wait()
            done.wait()
            seen[tuple(sorted(outcomes))] += 1
    except threading.BrokenBarrierError:
        seen[tuple(sorted(outcomes))] += 1
    for thread in threads:
        thread.join()
    return seen


@pytest.mark.timeout(300)
@pytest.mark.parametrize("race", [_race_on_fresh_threads, _race_on_two_threads],
                         ids=["fresh-threads", "long-lived-threads"])
@pytest.mark.parametrize("spec", ["thread-cache", "dict-lookup+reclaim+thread-cache(magazine=8)"])
def test_two_threads_freeing_one_block_at_once_one_of_them_wins(
    spec: str,
    race: Callable[[pyslab.SlabAllocator, int], Counter[tuple[str, ...]]],
    fast_switching: None,
    unraisable: list[str],
) -> None:
    trials = 20_000 if LONG else 1_500
    with pyslab.SlabAllocator(policy=spec) as heap:
        seen = race(heap, trials)
        assert seen == {("freed", "refused"): trials}, seen
        _assert_nothing_lost(heap)
    assert unraisable == []


# --- set_policy while threads allocate ------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("same_instance", [False, True], ids=["new-cache", "same-cache"])
def test_set_policy_adds_and_removes_thread_cache_while_eight_threads_allocate(
    same_instance: bool, fast_switching: None, unraisable: list[str]
) -> None:
    switches = 600 if LONG else 60
    cache = pyslab.make_policy("thread-cache", magazine=8, batch=4)
    with_cache: pyslab.PolicySpec = (
        ["dict-lookup", "reclaim", cache] if same_instance
        else "dict-lookup+reclaim+thread-cache(magazine=8, batch=4)"
    )
    without_cache = "dict-lookup+reclaim"
    heap = pyslab.SlabAllocator(policy=with_cache)
    stop = threading.Event()
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[int, int, int]] = []
        try:
            step = 0
            while not stop.is_set() or step < 200:
                step += 1
                if mine and (len(mine) > 48 or rng.random() < 0.45):
                    address, size, byte = mine.pop(rng.randrange(len(mine)))
                    if not block_intact(address, size, byte):
                        failures.append(f"{address:#x} lost its pattern")
                    heap.free(address)
                else:
                    size = rng.choice((*SIZES, 3000))
                    align = rng.choice((8, 8, 8, 16, 64))
                    address = heap.alloc(size, align)
                    byte = pattern_byte(seed * 131 + step)
                    fill_block(address, size, byte)
                    mine.append((address, size, byte))
            for address, size, byte in mine:
                if not block_intact(address, size, byte):
                    failures.append(f"{address:#x} lost its pattern")
                heap.free(address)
        except BaseException as error:  # reported by the test, with what the thread held
            failures.append(f"{error!r} with {len(mine)} blocks held")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        for switch in range(switches):
            heap.set_policy(without_cache if switch % 2 == 0 else with_cache)
            time.sleep(0.002)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    _assert_nothing_lost(heap)
    heap.close()
    assert heap.page_source.mapped_bytes == 0
    assert unraisable == []


# --- fork while threads allocate ------------------------------------------------------------


def _child_checks(allocator: pyslab.SlabAllocator, kept: dict[int, tuple[int, int]]) -> int:
    """In the child: the common checks, then a thread of its own, shrink, validate, close."""
    status = _child_work(allocator, kept)
    if status:
        return status
    try:
        codes: list[int] = []
        helper = threading.Thread(target=lambda: codes.append(_child_work(allocator, {})))
        helper.start()
        helper.join()
        if codes != [0]:
            return max(codes, default=4)
        allocator.shrink()
        allocator.validate()
        # The blocks the parent's other threads held stay live (nobody frees them here).
        orphans = allocator.stats().live_blocks - len(kept)
        for address in kept:
            allocator.free(address)
        allocator.validate()
        if allocator.stats().live_blocks != orphans:
            return 2
        allocator.close()
        return 0
    except pyslab.CorruptionError:
        import traceback

        traceback.print_exc()
        return 3
    except BaseException:
        import traceback

        traceback.print_exc()
        return 4


def fork_while_threads_use_the_thread_cache(forks: int) -> int:
    """Four threads allocate and free through thread-cache; the main thread forks ``forks``
    times, and each child checks the heap it inherited. Prints the results; 0 when all pass."""
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, Python >= 3.12
    sys.setswitchinterval(1e-5)
    allocator, kept = _populated("dict-lookup+reclaim+thread-cache(magazine=16)")
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        held: list[int] = []
        try:
            while not stop.is_set():
                held.append(allocator.alloc(SIZES[rng.randrange(len(SIZES))]))
                while len(held) > 24 or (held and rng.random() < 0.45):
                    allocator.free(held.pop(rng.randrange(len(held))))
        except BaseException as error:
            errors.append(error)
        for address in held:
            allocator.free(address)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    results: Counter[str] = Counter()
    try:
        for _ in range(forks):
            time.sleep(0.002)
            pid = os.fork()
            if pid == 0:
                os._exit(_child_checks(allocator, kept))
            results[_wait(pid)] += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    gc.collect()
    allocator.validate()
    for address in kept:
        allocator.free(address)
    gc.collect()
    allocator.validate()
    live = allocator.stats().live_blocks
    allocator.close()
    print(f"children: {dict(results)}; parent: {live} live blocks, errors {errors!r}", flush=True)
    return 0 if results == {"ok": forks} and not errors and live == 0 else 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.timeout(300)
def test_the_child_of_a_fork_finds_the_thread_cache_consistent() -> None:
    forks = 500 if LONG else 60
    code = (
        "import sys\n"
        "from tests.reliability.test_front_ends import fork_while_threads_use_the_thread_cache\n"
        f"sys.exit(fork_while_threads_use_the_thread_cache({forks}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]


# --- debug under a signal handler that allocates --------------------------------------------

_NEW_ALIGNMENTS_UNDER_SIGNALS = textwrap.dedent(
    """
    import signal, sys
    import pyslab

    heap = pyslab.SlabAllocator(policy=sys.argv[1])
    handled = 0

    def handler(signum, frame):
        global handled
        handled += 1
        heap.free(heap.alloc(24, 32))  # an alignment whose layout the main thread builds too

    signal.signal(signal.SIGALRM, handler)
    # Every 100 us: shorter than building a layout entry by entry took (about 500 us).
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    try:
        for align in (16, 32, 64, 128, 256, 512, 1024, 4096):  # each first use: a new layout
            heap.free(heap.alloc(24, align))
        while handled < 200:  # bounded by signals delivered
            heap.free(heap.alloc(40, 16))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
    heap.validate()
    assert heap.stats().live_blocks == 0
    heap.close()
    print("handled", handled)
    """
)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", ["dict-lookup+debug", "thread-cache+debug"])
def test_debug_builds_a_new_alignment_under_a_signal_handler_that_allocates(spec: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _NEW_ALIGNMENTS_UNDER_SIGNALS, spec], cwd=ROOT,
            capture_output=True, text=True, timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the first allocations of new alignments never completed")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "handled" in done.stdout and done.stderr == ""


def _under_a_signal_handler_that_allocates(spec: str, operations: int) -> None:
    """The main thread allocates and frees ``operations`` times (pairs, mostly) while a
    ``SIGALRM`` handler, every 100 us, allocates blocks of the same classes and keeps a few
    hundred: every pattern holds, nothing is reported, nothing is lost."""
    alignments = (8, 16, 32, 64)
    with pyslab.SlabAllocator(policy=spec) as heap:
        for align in alignments:  # every layout built before the handler runs
            heap.free(heap.alloc(24, align))
        failures: list[str] = []
        held_by_handler: list[tuple[int, int, int]] = []
        handled = 0

        def handler(signum: int, frame: object) -> None:
            # Handlers nest (a signal can arrive during this one): only locals after a call.
            nonlocal handled
            handled += 1
            n = handled
            try:
                # Blocks of the classes the main thread uses, kept a while: the handler empties
                # free lists that the interrupted call was about to look at.
                size = SIZES[n % 4]
                address = heap.alloc(size, alignments[n % 2])
                fill_block(address, size, pattern_byte(n))
                held_by_handler.append((address, size, pattern_byte(n)))
                if len(held_by_handler) > 200:
                    old, old_size, byte = held_by_handler.pop(0)
                    if not block_intact(old, old_size, byte):
                        failures.append(f"handler: {old:#x} lost its pattern")
                    heap.free(old)
            except BaseException as error:  # a handler must not raise into the main thread
                failures.append(f"handler: {error!r}")

        rng = random.Random(7)
        live: list[tuple[int, int, int]] = []
        old_handler = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        try:
            for step in range(operations):
                try:
                    if step % 4:  # a pair: the free list of its slab stays one slot long
                        size = SIZES[step % 4]
                        heap.free(heap.alloc(size, alignments[step % 3 % 2]))
                    elif live and (len(live) > 64 or rng.random() < 0.5):
                        address, size, byte = live.pop(rng.randrange(len(live)))
                        if not block_intact(address, size, byte):
                            failures.append(f"{address:#x} lost its pattern")
                        heap.free(address)
                    else:
                        size = SIZES[rng.randrange(len(SIZES))]
                        address = heap.alloc(size, alignments[step % len(alignments)])
                        fill_block(address, size, pattern_byte(step))
                        live.append((address, size, pattern_byte(step)))
                except Exception as error:  # a false report, or worse (a read at address 0)
                    failures.append(f"step {step}: {error!r}")
                if len(failures) > 5:
                    break
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old_handler)
        assert failures == []
        assert handled > 100, "the handler hardly ever ran"
        for address, size, byte in [*live, *held_by_handler]:
            assert block_intact(address, size, byte)
            heap.free(address)
        for debug in (p for p in heap.policy.policies if p.name == "debug"):
            assert debug.quarantined() == ()  # type: ignore[attr-defined]
            assert getattr(debug, "deferred_errors", []) == []
        assert heap.deferred_errors == []
        _assert_nothing_lost(heap)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", ["dict-lookup+debug", "dict-lookup+reclaim+debug",
                                  "thread-cache+debug"])
def test_debug_reports_no_corruption_of_a_healthy_heap_under_a_signal_handler(spec: str) -> None:
    _under_a_signal_handler_that_allocates(spec, 600_000 if LONG else 60_000)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", ["thread-cache", "dict-lookup+reclaim+thread-cache(magazine=8)"])
def test_thread_cache_stays_consistent_under_a_signal_handler_that_allocates(spec: str) -> None:
    _under_a_signal_handler_that_allocates(spec, 1_000_000 if LONG else 100_000)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", ["thread-cache", "dict-lookup+reclaim+thread-cache(magazine=8)",
                                  "thread-cache+debug"])
def test_finalizers_that_allocate_inside_front_end_calls(spec: str, eager_gc: None) -> None:
    """Cyclic garbage whose finalizers free and allocate, collected at nearly every allocation
    (threshold 1): the collector starts inside the front ends' calls, on this thread."""
    with pyslab.SlabAllocator(policy=spec) as allocator:
        ledger = Ledger(allocator)
        gc.set_threshold(1, 1, 1)
        try:
            live = _workload(ledger, 15_000 if LONG else 1_500)
        finally:
            gc.set_threshold(700, 10, 10)
        gc.collect()
        for address, size, byte in live:
            assert block_intact(address, size, byte)
            allocator.free(address)
        ledger.settle()
        assert ledger.errors == [] and ledger.corrupt == []
        assert ledger.ran["__del__"] > 0 and ledger.ran["weakref.finalize"] > 0
        assert allocator.deferred_errors == []
        _assert_nothing_lost(heap=allocator)


# --- threads that C created -----------------------------------------------------------------


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.fixture(scope="module")
def c_stress(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """mimalloc's stress test in C threads (``c/stress.c``, as ``test_c_abi.py`` builds it)."""
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler to build tests/reliability/c/stress.c")
    library = tmp_path_factory.mktemp("c_stress") / "libstress.so"
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-pthread", str(HERE / "c" / "stress.c"),
         "-o", str(library)],
        check=True, capture_output=True, timeout=120,
    )
    lib = ctypes.CDLL(str(library))
    lib.pyslab_c_stress.argtypes = [
        MALLOC_FUNC, CALLOC_FUNC, REALLOC_FUNC, FREE_FUNC, ctypes.c_int, ctypes.c_int,
        ctypes.c_int, ctypes.POINTER(ctypes.c_long),
    ]
    lib.pyslab_c_stress.restype = ctypes.c_int
    return lib


@pytest.mark.timeout(300)
def test_a_c_thread_keeps_its_magazines_across_its_calls(c_stress: ctypes.CDLL) -> None:
    threads, rounds, scale = (8, 10, 2) if LONG else (8, 3, 1)
    cache: Any = pyslab.make_policy("thread-cache")
    with pyslab.SlabAllocator(policy=["dict-lookup", cache]) as heap:
        c = pyslab.c_functions(heap)
        out = (ctypes.c_long * 4)()
        started = time.perf_counter()
        assert c_stress.pyslab_c_stress(
            c.malloc, c.calloc, c.realloc, c.free, threads, rounds, scale, out
        ) == 0
        elapsed = time.perf_counter() - started
        corrupt, nulls, allocations, frees = out
        c.check()
        assert (corrupt, nulls) == (0, 0) and frees == allocations
        calls = allocations + frees
        made = cache.magazine_sets
        print(f"C threads: {threads} x {rounds} rounds, {calls} calls, {made} magazine sets, "
              f"{elapsed / calls * 1e6:.1f} us a call")
        # one set per C thread at most (a thread whose identifier a new one reuses hands its
        # set on), and one for this thread: never one per call
        assert made <= threads * rounds + 1
        _assert_nothing_lost(heap)


_TWO_CALLS = r"""
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

typedef void (*free_fn)(void *);
static free_fn call_free;
static void *blocks[2];
static atomic_int phase;
static pthread_t thread;

/* One C thread, two calls into Python with a pause between them (told by phase). */
static void *run(void *unused) {
    (void)unused;
    call_free(blocks[0]);
    atomic_store(&phase, 1);
    while (atomic_load(&phase) != 2) sched_yield();
    call_free(blocks[1]);
    return NULL;
}

int two_calls_start(free_fn f, void *a, void *b) {
    call_free = f, blocks[0] = a, blocks[1] = b;
    atomic_store(&phase, 0);
    return pthread_create(&thread, NULL, run, NULL);
}
int two_calls_phase(void) { return atomic_load(&phase); }
void two_calls_resume(void) { atomic_store(&phase, 2); }
int two_calls_join(void) { return pthread_join(thread, NULL); }
"""


@pytest.fixture(scope="module")
def two_calls(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """A C thread that frees one block, waits to be told, and frees another."""
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    folder = tmp_path_factory.mktemp("two_calls")
    (folder / "two_calls.c").write_text(_TWO_CALLS)
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-pthread", str(folder / "two_calls.c"),
         "-o", str(folder / "libtwo_calls.so")],
        check=True, capture_output=True, timeout=120,
    )
    lib = ctypes.CDLL(str(folder / "libtwo_calls.so"))
    lib.two_calls_start.argtypes = [FREE_FUNC, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)  # drops the GIL: the C thread's call into Python can run


@pytest.mark.timeout(120)
def test_a_c_thread_keeps_its_magazines_between_calls_and_they_go_back_once_it_is_gone(
    two_calls: ctypes.CDLL,
) -> None:
    cache: Any = pyslab.make_policy("thread-cache")
    with pyslab.SlabAllocator(policy=["dict-lookup", cache]) as heap:
        c = pyslab.c_functions(heap)
        # Aligned beyond what the magazines serve: from the slabs, leaving this thread's
        # magazines empty, so that every cached block below is a C thread's.
        first, second = heap.alloc(64, 64), heap.alloc(64, 64)
        sets = cache.magazine_sets
        assert two_calls.two_calls_start(c.free, first, second) == 0
        _wait_until(lambda: two_calls.two_calls_phase() == 1, "the first call")
        # The call is over and its thread state gone; the thread's magazines are not.
        assert heap.stats().classes[3].cached_slots == 1
        assert cache.magazine_sets == sets + 1
        two_calls.two_calls_resume()
        assert two_calls.two_calls_join() == 0
        c.check()
        # The second call found the same magazines: one set, both blocks in it.
        assert cache.magazine_sets == sets + 1
        assert heap.stats().classes[3].cached_slots == 2
        assert heap.stats().live_blocks == 0

        def gone() -> bool:
            # A new C thread's first call looks for threads that are gone (one just joined
            # can linger in /proc/self/task for a moment). Left: the new thread's block, and
            # the old set if the new thread reused its identifier (it adopts the set).
            _in_c_threads(c.address("free"), [heap.alloc(64, 64)])
            return heap.stats().classes[3].cached_slots <= 3

        _wait_until(gone, "the blocks of a C thread that is gone")
        heap.shrink()  # flush: every magazine, of live threads and of gone ones
        assert heap.stats().classes[3].cached_slots == 0
        _assert_nothing_lost(heap)


@pytest.mark.timeout(120)
def test_the_blocks_of_many_c_threads_that_are_gone_go_back_to_the_heap() -> None:
    cache: Any = pyslab.make_policy("thread-cache")
    with pyslab.SlabAllocator(policy=["dict-lookup", cache]) as heap:
        c = pyslab.c_functions(heap)
        for _ in range(4):  # rounds of 16 C threads, each freeing one block and exiting
            _in_c_threads(c.address("free"), [heap.alloc(64, 64) for _ in range(16)])
            c.check()
        assert cache.magazine_sets <= 4 * 16

        def gone() -> bool:
            _in_c_threads(c.address("free"), [heap.alloc(64, 64)])
            return heap.stats().classes[3].cached_slots <= 2

        _wait_until(gone, "the blocks of C threads that are gone")
        assert heap.stats().live_blocks == 0
        heap.shrink()
        assert heap.stats().classes[3].cached_slots == 0
        _assert_nothing_lost(heap)

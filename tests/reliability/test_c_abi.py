"""The C-callable allocator under stress, faults and exceptions (``SlabAllocator.c_functions()``).

- Threads that C created, which Python never saw, call the function pointers at once: many
  ``pthread_create`` threads whose start routine *is* pyslab's ``malloc`` or ``free`` (no
  compiler needed), and mimalloc's stress test ported to C (``c/stress.c``, built when a C
  compiler is found).
- Out of memory through the C interface: every failure point of a page source gives NULL, is
  recorded, leaves every block intact, and allocation works again afterwards.
- Failures inside a callback never cross into C: NULL is returned, the error is recorded, and
  nothing is printed on the C library's stderr (checked in a subprocess).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyslab
from pyslab.interop.cabi import CALLOC_FUNC, FREE_FUNC, MALLOC_FUNC, REALLOC_FUNC, CFunctionError
from tests.reliability.faults import FailingPageSource, Injection
from tests.support import CONFIGURATIONS, block_intact, fill_block

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
_libc = ctypes.CDLL(None, use_errno=True)
_START = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_libc.pthread_create.argtypes = [
    ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, _START, ctypes.c_void_p,
]
_libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p)]


def _in_c_threads(function: int, arguments: list[int]) -> list[int]:
    """Start one C thread per argument, all at once, running ``function(argument)``; join them.

    ``function`` is the address of a ``void *(*)(size_t)`` or ``void (*)(void *)``: on x86-64
    and aarch64 both take their one argument where a start routine ``void *(*)(void *)`` does.
    """
    start = ctypes.cast(function, _START)
    threads = [ctypes.c_ulong() for _ in arguments]
    for thread, argument in zip(threads, arguments, strict=True):
        assert _libc.pthread_create(ctypes.byref(thread), None, start, argument) == 0
    results = []
    for thread in threads:  # ctypes releases the GIL in pthread_join: the threads run
        value = ctypes.c_void_p()
        assert _libc.pthread_join(thread, ctypes.byref(value)) == 0
        results.append(value.value or 0)
    return results


@pytest.fixture(
    params=tuple(
        spec for spec in dict.fromkeys(("dict-lookup+reclaim", CONFIGURATIONS[-1], "thread-cache"))
        if set(spec.split("+")) <= set(pyslab.policies())
    )
)
def alloc(request: pytest.FixtureRequest) -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator(policy=request.param) as allocator:
        yield allocator
        allocator.validate()


@pytest.mark.timeout(60)
def test_many_threads_that_c_created_allocate_and_free_at_once(
    alloc: pyslab.SlabAllocator,
) -> None:
    c = pyslab.c_functions(alloc)
    sizes = [8, 24, 64, 100, 512, 1024, 3000, 70_000] * 8
    blocks = _in_c_threads(c.address("malloc"), sizes)
    assert all(blocks) and len(set(blocks)) == len(blocks)
    for i, (address, size) in enumerate(zip(blocks, sizes, strict=True)):
        assert alloc.owns(address) and alloc.usable_size(address) >= size
        fill_block(address, size, i % 251 + 1)
    for i, (address, size) in enumerate(zip(blocks, sizes, strict=True)):
        assert block_intact(address, size, i % 251 + 1)
    _in_c_threads(c.address("free"), blocks)
    c.check()
    assert alloc.stats().live_blocks == 0


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.fixture(scope="module")
def c_stress(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
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


@pytest.mark.timeout(120)
def test_mimalloc_stress_in_c_threads_through_the_function_pointers(
    alloc: pyslab.SlabAllocator, c_stress: ctypes.CDLL
) -> None:
    c = pyslab.c_functions(alloc)
    out = (ctypes.c_long * 4)()
    assert c_stress.pyslab_c_stress(c.malloc, c.calloc, c.realloc, c.free, 8, 3, 1, out) == 0
    corrupt, nulls, allocations, frees = out
    print(f"C stress: 8 C threads x 3 rounds, {allocations} allocations, {frees} frees")
    c.check()
    assert (corrupt, nulls) == (0, 0)
    assert allocations > 1000 and frees == allocations
    assert alloc.stats().live_blocks == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("persistent", [False, True])
def test_out_of_memory_through_c_gives_null_and_loses_nothing(persistent: bool) -> None:
    """A sweep over the map_slab requests of a small C workload, on the core (a thread cache's
    refill that gets some blocks before the page source fails serves the call: no NULL)."""
    counting = Injection()
    spec = "dict-lookup+reclaim"
    with pyslab.SlabAllocator(page_source=FailingPageSource(slabs=counting), policy=spec) as alloc:
        c = pyslab.c_functions(alloc)
        for size in (8, 64, 512, 1024, 4000):
            c.free(c.malloc(size))
    for at in range(1, counting.requests + 1):
        injection = Injection(at=at, persistent=persistent)
        source = FailingPageSource(slabs=injection)
        with pyslab.SlabAllocator(page_source=source, policy=spec) as alloc:
            c = pyslab.c_functions(alloc)
            kept: list[tuple[int, int]] = []  # (address, size) of blocks C got; byte: index
            for size in (8, 64, 512, 1024, 4000):
                address = c.malloc(size)
                if address is None:
                    continue
                fill_block(address, size, len(kept) + 1)
                kept.append((address, size))
            assert injection.failures > 0
            with pytest.raises(CFunctionError, match="malloc") as caught:
                c.check()
            assert isinstance(caught.value.__cause__, MemoryError)
            alloc.validate()
            assert all(block_intact(a, n, i + 1) for i, (a, n) in enumerate(kept))
            injection.at = 0  # failures stop
            again = c.malloc(64)
            assert again is not None
            c.free(again)
            for address, _ in kept:
                c.free(address)
            c.check()
            assert alloc.stats().live_blocks == 0


_QUIET = textwrap.dedent(
    """
    import ctypes, sys, threading
    import pyslab
    from pyslab.interop.cabi import MALLOC_FUNC, FREE_FUNC, REALLOC_FUNC

    alloc = pyslab.SlabAllocator(policy="dict-lookup")
    c = pyslab.c_functions(alloc)
    # the C entry points, called through libffi as a C library would call them
    malloc = MALLOC_FUNC(c.address("malloc"))
    realloc = REALLOC_FUNC(c.address("realloc"))
    free = FREE_FUNC(c.address("free"))
    kept = malloc(64)
    results = [
        malloc(2**62),                  # out of memory
        realloc(0x1000, 8),             # a pointer pyslab never handed out
        realloc(kept, 2**62),           # out of memory, the block stays
    ]
    free(0x1000)                        # refused
    alloc.close()
    results.append(malloc(64))          # closed
    failures = [type(f.error).__name__ for f in c.failures]
    print(results, failures)
    assert results == [None, None, None, None], results
    assert failures == [
        "MemoryError", "InvalidFreeError", "MemoryError", "InvalidFreeError",
        "AllocatorClosedError",
    ], failures
    """
)


@pytest.mark.timeout(60)
def test_failures_in_callbacks_give_null_and_print_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _QUIET], cwd=ROOT, capture_output=True, text=True, timeout=50,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "", "something was printed into the C library's stderr"


_SIGNALLED = textwrap.dedent(
    """
    import signal, sys
    import pyslab
    from pyslab.interop.cabi import MALLOC_FUNC, FREE_FUNC

    alloc = pyslab.SlabAllocator(policy="dict-lookup")
    c = pyslab.c_functions(alloc)
    malloc = MALLOC_FUNC(c.address("malloc"))
    free = FREE_FUNC(c.address("free"))

    class Interrupt(Exception):
        pass

    armed = [False]

    def handler(signum, frame):
        if armed[0]:  # once per arming: never inside this script's own bookkeeping
            armed[0] = False
            raise Interrupt()

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    held = []
    try:
        for _ in range(30_000):
            try:
                armed[0] = True
                address = malloc(64)
                armed[0] = False
                if address:
                    held.append(address)
                if len(held) > 32:
                    armed[0] = True
                    free(held.pop(0))
                    armed[0] = False
            except Interrupt:
                pass  # raised between two calls, in this script: not the callbacks' business
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print("failures recorded:", c.failure_count)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.xfail(
    strict=True,
    reason="CPython runs pending signal handlers at a callback's first instruction, before the "
    "callback's try: an exception a handler raises there escapes into ctypes, which prints "
    "'Exception ignored on calling ctypes callback function' on stderr (main thread only)",
)
def test_an_exception_raised_by_a_signal_handler_in_a_callback_prints_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALLED], cwd=ROOT, capture_output=True, text=True, timeout=50,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stderr == "", done.stderr[-2000:]

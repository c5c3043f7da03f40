"""Out-of-memory sweeps (see ``faults.py``): every failure point, transient and persistent.

Also real exhaustion, without any injection: a subprocess under ``RLIMIT_AS`` allocates until
the kernel and libc really refuse, and must get ``MemoryError`` (not a crash), with the
allocator consistent afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyslab
from tests.reliability.faults import (
    FailingPageSource,
    Injection,
    SweepReport,
    run_workload,
    sweep,
)
from tests.support import CONFIGURATIONS, block_intact, fill_block

ROOT = Path(__file__).resolve().parents[2]
SWEPT = tuple(dict.fromkeys(("first-fit", "dict-lookup+reclaim", CONFIGURATIONS[-1])))


def _check(report: SweepReport) -> None:
    print(
        f"{report.requests} requests, {report.points} points swept, "
        f"{report.failures} MemoryErrors checked"
    )
    assert report.problems == []
    assert report.requests > 0
    assert report.points == 2 * report.requests
    assert report.failures >= report.points  # each point failed at least once (persistent: more)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["slab", "large"])
@pytest.mark.parametrize("spec", SWEPT)
def test_every_failure_point_is_survived(spec: str, kind: str) -> None:
    _check(sweep(spec, kind, steps=250))


@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kind", ["slab", "large"])
@pytest.mark.parametrize("spec", CONFIGURATIONS)
def test_every_failure_point_is_survived_long(spec: str, kind: str) -> None:
    _check(sweep(spec, kind, steps=2000, seed=7))


def test_a_failed_map_changes_nothing_and_the_next_one_works() -> None:
    """The unit case of the sweep, spelled out: the first slab of a class fails to map."""
    injection = Injection(at=2)
    with pyslab.SlabAllocator(page_source=FailingPageSource(slabs=injection)) as allocator:
        kept = allocator.alloc(64)
        fill_block(kept, 64, 0x11)
        before = allocator.stats()
        with pytest.raises(MemoryError, match="map_slab request 2"):
            allocator.alloc(128)
        assert allocator.stats() == before
        allocator.validate()
        assert block_intact(kept, 64, 0x11)
        again = allocator.alloc(128)  # transient: request 3 succeeds
        assert allocator.usable_size(again) == 128
        for address in (again, kept):
            allocator.free(address)


def test_the_sweep_workload_reaches_every_class_and_the_fallback() -> None:
    """The sweep is only as good as its workload: it must ask for slabs of every class."""
    counting = Injection()
    with pyslab.SlabAllocator(page_source=FailingPageSource(slabs=counting)) as allocator:
        run_workload(allocator, 250, 1, SweepReport(), counting)
        classes = allocator.stats().classes
        assert all(c.peak_used > 0 for c in classes)
    large = Injection()
    with pyslab.SlabAllocator(page_source=FailingPageSource(large=large)) as allocator:
        run_workload(allocator, 250, 1, SweepReport(), large)
    assert large.requests > 0


_EXHAUST = textwrap.dedent(
    """
    import ctypes, resource, sys
    import pyslab

    kind = sys.argv[1]
    size = 1024 if kind == "slab" else 1 << 20
    alloc = pyslab.SlabAllocator(policy="dict-lookup+reclaim")
    blocks = [0] * 200_000  # made before the limit: the loop below must not need memory
    count = 0
    alloc.free(alloc.alloc(size))  # every code path warmed up before the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        vm = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))
    margin = (24 if kind == "slab" else 192) << 20
    resource.setrlimit(resource.RLIMIT_AS, (vm + margin, hard))
    try:
        while count < len(blocks):
            address = alloc.alloc(size)
            ctypes.memset(address, count % 251 + 1, size)
            blocks[count] = address
            count += 1
    except MemoryError as error:
        # pyslab's names the call (mmap, malloc); Python's own is empty: which comes first
        # depends on whether the interpreter needs a new arena of its own near the limit.
        # Either way the call changed nothing, which the checks below verify.
        message = str(error) or "(Python's own, for its bookkeeping)"
    else:
        sys.exit("the limit was never reached")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    alloc.validate()
    for i in range(count):
        if ctypes.string_at(blocks[i], size) != bytes([i % 251 + 1]) * size:
            sys.exit(f"block {i} lost its pattern")
    for i in range(count // 2):
        alloc.free(blocks[i])
    alloc.free(alloc.alloc(size))  # memory came back: allocation works again
    for i in range(count // 2, count):
        alloc.free(blocks[i])
    alloc.validate()
    assert alloc.stats().live_blocks == 0
    alloc.close()
    assert alloc.page_source.mapped_bytes == 0
    print(f"{kind}: {count} blocks of {size} bytes, then MemoryError: {message}")
    """
)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
@pytest.mark.parametrize("kind", ["slab", "large"])
def test_real_exhaustion_under_rlimit_as_gives_memory_error(kind: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _EXHAUST, kind], cwd=ROOT, capture_output=True, text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "then MemoryError" in done.stdout
    print(done.stdout)

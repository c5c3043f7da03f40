"""mimalloc's stress test, ported (see ``tests/reliability/stress.py``), under every configuration.

The short variants always run (8 threads, a few rounds, about 10^4 blocks per configuration);
``PYSLAB_LONG=1`` runs the long ones. ``PYSLAB_STRESS_THREADS`` sets the thread count of both.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from tests.reliability.hooks import HOOKS_NAME
from tests.reliability.stress import (
    StressConfig,
    StressReport,
    make_allocator,
    run_stress,
    stress_configurations,
)

THREADS = int(os.environ.get("PYSLAB_STRESS_THREADS", "8"))
SHORT = StressConfig(threads=THREADS, rounds=2, scale=0.5)
LONG = StressConfig(threads=max(THREADS, 16), rounds=10, scale=2)


def _check(report: StressReport) -> None:
    print(report.summary())
    assert report.errors == []
    assert report.mismatched_bytes == 0
    assert report.live_after == 0, "blocks were lost: live count not back to zero"
    assert report.mapped_after_close == 0, "close() did not return every page"
    assert report.hook_normal_path == 0
    # the run did what it claims: blocks crossed threads and reached the large fallback
    assert report.cross_thread_frees > 0
    assert report.large_blocks > 0
    assert report.ok


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", stress_configurations())
def test_stress_short(spec: str) -> None:
    _check(run_stress(make_allocator(spec), SHORT, spec))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", ["first-fit", "dict-lookup+reclaim"])
def test_stress_with_reentrant_finalizers_short(spec: str, eager_gc: None) -> None:
    report = run_stress(make_allocator(spec), dataclasses.replace(SHORT, finalizers=True), spec)
    _check(report)
    assert report.finalizer_frees > 0
    # some finalizers ran inside allocator calls on some thread: the re-entrant paths ran
    assert report.deferred_frees > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", [f"dict-lookup+{HOOKS_NAME}", f"reclaim+{HOOKS_NAME}"])
def test_stress_with_an_alloc_free_pair_in_every_locked_region_short(spec: str) -> None:
    report = run_stress(make_allocator(spec), dataclasses.replace(SHORT, rounds=2), spec)
    _check(report)
    assert report.hook_pairs > 0
    assert report.reentrant_allocs >= report.hook_pairs


@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", [*stress_configurations(), f"dict-lookup+{HOOKS_NAME}"])
@pytest.mark.parametrize("finalizers", [False, True])
def test_stress_long(spec: str, finalizers: bool, eager_gc: None) -> None:
    report = run_stress(
        make_allocator(spec), dataclasses.replace(LONG, finalizers=finalizers), spec
    )
    _check(report)

"""Python out of memory inside every public call (see ``nomemory.py``): SQLite-style sweeps of
every Python allocation point, transient and persistent.

The persistent sweeps also guard the code shape of "Out of memory" in ``pyslab.core.guard``:
a ``finally`` or ``with`` cleanup late in a function makes CPython retry forever when memory
is gone (gh-132508), which the sweep's timeout would report."""

from __future__ import annotations

import pytest

from tests.reliability.nomemory import AVAILABLE, SCENARIOS, SweepReport, sweep

pytestmark = pytest.mark.usefixtures("frozen_collector")

needs_testcapi = pytest.mark.skipif(
    not AVAILABLE, reason="this CPython has no _testcapi.set_nomemory to inject failures"
)

PLAIN = ("first-fit", "dict-lookup", "reclaim", "dict-lookup+reclaim")
"""The configurations without a policy that observes every block (stats, fullest-first,
address-mask's region, debug, thread-cache)."""

SWEPT_IN_CI = ("first-fit", "dict-lookup+reclaim")
"""The bounded run: the O(slabs) base and the usual O(1) composition; the long run sweeps all."""

SLOW = ("set_policy",)
"""Building a policy from its name allocates hundreds of times: swept on its own."""


def _check(report: SweepReport) -> None:
    print(f"{report.points} points swept, {report.failures} MemoryErrors checked")
    assert report.problems == []
    assert report.failures > 0


FULLY = tuple(s for s in SCENARIOS if s.name not in SLOW)


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", SWEPT_IN_CI)
def test_every_python_allocation_point_of_every_call_is_survived(spec: str) -> None:
    _check(sweep(spec, FULLY, limit=300))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", PLAIN)
def test_every_python_allocation_point_of_every_call_is_survived_long(spec: str) -> None:
    _check(sweep(spec, FULLY, limit=3000))


OBSERVING = (
    "stats", "fullest-first+reclaim", "dict-lookup+reclaim+stats", "address-mask(region=4194304)",
)
"""Configurations with a policy that observes every block and slab: ``stats`` (counters and a
size table, alone and after ``dict-lookup``'s index in the notifications of a slab),
``fullest-first`` (buckets, a bitmap, ``current``), and ``address-mask`` (its table over an
arena region, whose lock is released in straight-line code). CI sweeps the first two; the long
run sweeps all four."""

QUERIES = (
    "alloc of a large block", "alloc aligned beyond every class", "free of a large block",
    "free of a foreign address", "double free", "usable_size and owns", "stats", "validate",
)
"""The calls that reach no observer's hook (large blocks, refused frees, queries): the
observing configurations sweep them in the long run only (``fullest-first``'s ``check``
alone allocates some 1,700 times)."""

TWO_STEP = ("realloc to another class", "realloc to a large block")
"""Moves with a second step (copying, freeing the old block) after the new block is taken.
The package's block observers can revert ``block_allocated`` without memory, so the core takes
the new slab block itself and undoes it without memory (a large block goes back to the
large-object service, which needs none): swept in full, as every other call. (A policy that
observes blocks without the revert hooks has its moves go through the public ``alloc`` and
``free``, whose undo needs memory: not swept here.)"""

OBSERVED = tuple(s for s in FULLY if s.name not in QUERIES + TWO_STEP)
"""The calls that take or give back a slab block, or make or release a slab, in one step."""

OBSERVED_TWO_STEP = tuple(s for s in FULLY if s.name in TWO_STEP)


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", OBSERVING[:2])
def test_observing_policies_survive_every_failure(spec: str) -> None:
    _check(sweep(spec, OBSERVED, limit=300))
    _check(sweep(spec, OBSERVED_TWO_STEP, limit=300))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", OBSERVING)
def test_observing_policies_survive_every_failure_long(spec: str) -> None:
    _check(sweep(spec, FULLY, limit=4000))


TWO_OBSERVERS = ("fullest-first+reclaim+stats", "stats+fullest-first")
"""Two policies that observe every block, in both orders: the composed hook tells them one by
one and, when the second raises, reverts the first (``revert_block_allocated``,
``revert_block_freed``) before the core undoes its own writes. CI sweeps the calls that reach
the observers; the long run every call."""


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", TWO_OBSERVERS)
def test_two_block_observers_survive_every_failure(spec: str) -> None:
    _check(sweep(spec, OBSERVED + OBSERVED_TWO_STEP, limit=300))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", TWO_OBSERVERS)
def test_two_block_observers_survive_every_failure_long(spec: str) -> None:
    _check(sweep(spec, FULLY, limit=4000))


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", SWEPT_IN_CI)
def test_set_policy_survives_every_failure(spec: str) -> None:
    # Building the new composition, binding it and switching to it: the switch is stores
    # only, so a failure anywhere before leaves the old policy bound and the heap unchanged.
    _check(sweep(spec, tuple(s for s in SCENARIOS if s.name in SLOW), limit=3000))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", PLAIN + OBSERVING)
def test_set_policy_survives_every_failure_long(spec: str) -> None:
    _check(sweep(spec, tuple(s for s in SCENARIOS if s.name in SLOW), limit=6000))

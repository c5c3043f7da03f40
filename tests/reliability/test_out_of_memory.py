"""Python out of memory inside every public call (see ``nomemory.py``): SQLite-style sweeps of
every Python allocation point, transient and persistent.

The persistent sweeps also guard the code shape of "Out of memory" in ``pyslab.core.guard``:
a ``finally`` or ``with`` cleanup late in a function makes CPython retry forever when memory
is gone (gh-132508), which the sweep's timeout would report."""

from __future__ import annotations

import pytest

from tests.reliability.nomemory import AVAILABLE, SCENARIOS, SweepReport, sweep

needs_testcapi = pytest.mark.skipif(
    not AVAILABLE, reason="this CPython has no _testcapi.set_nomemory to inject failures"
)

PLAIN = ("first-fit", "dict-lookup", "reclaim", "dict-lookup+reclaim")
"""The configurations without a policy that observes every block (stats, fullest-first,
address-mask's region, debug, thread-cache)."""

SWEPT_IN_CI = ("first-fit", "dict-lookup+reclaim")
"""The bounded run: the O(slabs) base and the usual O(1) composition; the long run sweeps all."""

SLOW = ("set_policy",)
"""Building a policy from its name allocates hundreds of times: swept in the long run."""


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


@needs_testcapi
@pytest.mark.timeout(300)
@pytest.mark.xfail(strict=True, reason="the hooks of stats and fullest-first are not yet "
                   "atomic: a failure inside one leaves its counters or buckets half updated")
@pytest.mark.parametrize("spec", ["stats", "fullest-first+reclaim"])
def test_observing_policies_survive_every_failure(spec: str) -> None:
    _check(sweep(spec, SCENARIOS[:2], limit=200))


@needs_testcapi
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("spec", PLAIN)
def test_set_policy_survives_every_failure_long(spec: str) -> None:
    _check(sweep(spec, tuple(s for s in SCENARIOS if s.name in SLOW), limit=3000))

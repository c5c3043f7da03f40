"""Fixtures of the reliability suite: the ``long`` gate and a clean garbage collector."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

LONG: bool = os.environ.get("PYSLAB_LONG") == "1"
"""True when long runs were asked for (``PYSLAB_LONG=1``)."""


@pytest.fixture(autouse=True)
def _long_runs_only_when_asked(request: pytest.FixtureRequest) -> None:
    """Skip a test marked ``long`` unless ``PYSLAB_LONG=1``: its bounded variant always runs."""
    if request.node.get_closest_marker("long") is not None and not LONG:
        pytest.skip("long run: set PYSLAB_LONG=1")


@pytest.fixture
def eager_gc() -> Iterator[None]:
    """Restore the collector's thresholds (tests lower them) and collect what is left."""
    old = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.collect()


@pytest.fixture
def frozen_collector() -> Iterator[None]:
    """For the out-of-memory sweeps: each allocation point starts with a full collection
    (``nomemory``); with every object made before the test frozen (``gc.freeze``), it walks
    only the sweep's own objects, not the whole test session's."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()

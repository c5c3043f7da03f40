from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

import pyslab
from tests.support import CONFIGURATIONS


@pytest.fixture(params=CONFIGURATIONS)
def allocator(request: pytest.FixtureRequest) -> Iterator[pyslab.SlabAllocator]:
    """A fresh allocator under each built-in configuration, validated and closed afterwards."""
    with pyslab.SlabAllocator(policy=request.param) as alloc:
        yield alloc
        alloc.validate()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond instead of every 5 ms: far more interleavings."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)

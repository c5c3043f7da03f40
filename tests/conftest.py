from __future__ import annotations

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

"""Shared helpers of the built-in workloads: a program-shaped size mix and random removal."""

from __future__ import annotations

import math
import random
from typing import Final, TypeVar

T = TypeVar("T")

MEDIAN: Final = 40
"""Median request of the mix, in bytes: CPython's common objects are 24 to 64 bytes."""
SIGMA: Final = 0.9
"""Spread of the log-normal: 70 % of requests are at most 64 bytes, 3 % above 256, and about
one in 2,500 above 1024 (served by the system fallback)."""
CAP: Final = 64 * 1024


def program_size(rng: random.Random) -> int:
    """A request size drawn from a log-normal mix: mostly small, with a long tail."""
    return min(CAP, max(1, round(rng.lognormvariate(math.log(MEDIAN), SIGMA))))


def pop_random(rng: random.Random, items: list[T]) -> T:
    """Remove and return a random item of ``items`` in O(1) (the order of the rest changes)."""
    index = rng.randrange(len(items))
    items[index], items[-1] = items[-1], items[index]
    return items.pop()

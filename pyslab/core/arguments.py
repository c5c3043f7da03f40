"""The one rule for the allocator's integer arguments (addresses, sizes, alignments, counts):
an int, or an object with ``__index__`` (a numpy integer, an int subclass), never a bool or a
float. Policies that take such arguments themselves (front ends) check them with the same
function, so that every configuration refuses the same values with the same errors."""

from __future__ import annotations

import operator

__all__ = ["as_int"]


def as_int(value: object, what: str) -> int:
    """``value`` as an int: an int, or an object with ``__index__`` (a numpy integer) but a
    bool, as everywhere in the allocator's interface.

    Raises:
        TypeError: ``value`` is not such an object, or its ``__index__`` failed (the error
            is chained); the message names ``what`` and the value.

    Complexity: O(1).
    """
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an int, not {value!r}")
    try:
        return operator.index(value)
    except Exception as error:
        raise TypeError(f"{what}: {value!r}.__index__() failed: {error!r}") from error

"""The exceptions pyslab raises. Every one names the value or address that caused it.

All derive from :class:`PyslabError`. The errors about bad input also derive from the built-in
type a caller would expect (``ValueError``, ``LookupError``, ``RuntimeError``), so that
``except ValueError`` keeps working. When one of them is raised by ``free``, ``realloc`` or
``usable_size``, the allocator is exactly as it was before the call.
"""

from __future__ import annotations

__all__ = [
    "AllocatorClosedError",
    "CorruptionError",
    "DoubleFreeError",
    "InvalidFreeError",
    "PolicyError",
    "PyslabError",
    "PyslabWarning",
    "UnknownPolicyError",
]


class PyslabError(Exception):
    """Base class of every pyslab exception."""


class InvalidFreeError(PyslabError, ValueError):
    """An address given to ``free``/``realloc``/``usable_size`` is not a live block's start.

    Raised for foreign addresses, addresses inside a slot, and slots never handed out.
    ``address`` holds the offending address.
    """

    def __init__(self, message: str, address: int) -> None:
        super().__init__(message)
        self.address = address


class DoubleFreeError(InvalidFreeError):
    """The block at ``address`` was already free."""


class AllocatorClosedError(PyslabError, RuntimeError):
    """The allocator was used after :meth:`SlabAllocator.close`."""


class PolicyError(PyslabError, ValueError):
    """A policy cannot be built, composed or bound (the message names the policy)."""


class UnknownPolicyError(PolicyError, LookupError):
    """No policy is registered under the name given; the message lists the known names."""


class CorruptionError(PyslabError, RuntimeError):
    """An invariant of the heap does not hold: memory was overwritten or state is inconsistent.

    pyslab never repairs what it finds: the message says what is wrong and where.
    """


class PyslabWarning(RuntimeWarning):
    """Reports an error that could not be raised to its caller (a deferred free that failed)."""

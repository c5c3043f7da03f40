"""One allocator per page source: closing an allocator closes its source, so two sharing one
would unmap each other's slabs (and reading a live block would then crash the interpreter).

Each allocator claims its source when it is built; a second claim is refused while the first
allocator is open, or closed but still retaining mappings for live Python objects (it closes
the source once they are gone), and a closed source is refused. Claims are held by weak
reference: they keep no allocator alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .allocator import SlabAllocator
    from .pages import PageSource

__all__ = ["claim", "disclaim"]

# The allocator each page source serves, by id() of the source: an allocator holds its source,
# so the id is the source's for as long as the allocator lives. Read and written only under
# _LOCK (never held with another lock).
_USERS: Final[weakref.WeakValueDictionary[int, SlabAllocator]] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def claim(source: PageSource, allocator: SlabAllocator) -> None:
    """Record ``allocator`` as the one user of ``source``.

    Raises:
        ValueError: ``source`` serves another allocator that is open or still retains
            mappings, or ``source`` is closed; the message names both.

    Complexity: O(1).
    """
    with _LOCK:
        user = _USERS.get(id(source))
        # A closed allocator still uses its source while it retains mappings, and closes it
        # when the last goes; it closes the source before it forgets that mapping, so the
        # check of ``closed`` below, made after this one, sees the source closed.
        if user is not None and user is not allocator and (
            not user.closed or user.retained_mappings
        ):
            how = (
                f"still serves {user!r}, closed but retaining blocks that live Python "
                f"objects own (it closes the source once they are gone)"
                if user.closed
                else f"already serves {user!r}"
            )
            raise ValueError(
                f"page source {source!r} {how}: a page source serves one allocator at a "
                f"time (closing either allocator would unmap the other's slabs); give each "
                f"allocator a source of its own"
            )
        if getattr(source, "closed", False) is True:
            raise ValueError(
                f"page source {source!r} is closed: a closed source maps no slab (the "
                f"allocator it served closed it); give each allocator a source of its own"
            )
        _USERS[id(source)] = allocator


def disclaim(source: PageSource, allocator: SlabAllocator) -> None:
    """Drop ``allocator``'s claim on ``source`` (its constructor failed). Complexity: O(1)."""
    with _LOCK:
        if _USERS.get(id(source)) is allocator:
            del _USERS[id(source)]


def _fresh_lock() -> None:
    # In a fork's child, another thread of the parent may have held the lock: it never will
    # release it there. The dict itself is consistent (each operation on it is atomic).
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)

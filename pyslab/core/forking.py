"""Locks that survive ``fork()``.

The child of ``fork()`` has one thread: a lock another thread held at that moment would stay
held forever, over a half-updated structure. As glibc does for malloc, every tracked object's
lock is taken before the fork (so nothing is half-updated), released in the parent, and
replaced by a fresh lock in the child.

Objects are tracked by *level*: locks of a higher level are taken first, because code holding
them may call into objects of a lower level (a typed slab calls its allocator), never the
reverse; so the fork handler takes locks in the order the program does and cannot deadlock.

State that other threads change without any lock (``thread-cache``'s per-thread magazines,
moved by single atomic steps of the interpreter) cannot be held still by a lock: another thread
may be between two such steps when the parent forks. Its owner rebuilds it in the child, from
an ``os.register_at_fork`` handler of its own. Handlers run in the child in the order they were
registered, and this module registers its handler when the core is imported, before any plugin
can register one: so such a rebuild runs once every tracked lock is fresh, and may call the
allocators.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Final, Protocol

__all__ = ["ALLOCATORS", "CONTAINERS", "protect_across_fork", "track"]

ALLOCATORS: Final = 0
"""Level of :class:`~pyslab.SlabAllocator` locks (taken last)."""
CONTAINERS: Final = 1
"""Level of objects that call into an allocator while holding their own lock (typed slabs)."""


class _Locked(Protocol):
    _lock: threading.RLock


_tracked: Final[tuple[weakref.WeakSet[_Locked], ...]] = (weakref.WeakSet(), weakref.WeakSet())
_held: list[_Locked] = []


def track(owner: _Locked, level: int) -> None:
    """Make ``owner._lock`` safe across ``fork()`` for as long as ``owner`` lives."""
    _tracked[level].add(owner)


def protect_across_fork(owner: _Locked) -> None:
    """Make ``owner._lock`` (an ``RLock``) safe across ``fork()`` while ``owner`` lives.

    For objects above the core that call an allocator while holding their own lock (a typed
    slab, an object cache): their locks are taken before the allocators' at a fork, in the
    order the program takes them, and replaced by fresh locks in the child.

    Complexity: O(1).
    """
    track(owner, CONTAINERS)


def _before_fork() -> None:
    _held[:] = [owner for level in reversed(_tracked) for owner in list(level)]
    for owner in _held:
        owner._lock.acquire()


def _after_fork_in_parent() -> None:
    for owner in reversed(_held):
        owner._lock.release()
    _held.clear()


def _after_fork_in_child() -> None:
    for owner in _held:
        owner._lock = threading.RLock()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

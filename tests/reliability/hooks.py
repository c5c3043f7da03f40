"""jemalloc's re-entrant test mode for pyslab: an alloc+free pair from inside every locked region.

jemalloc's test harness can run every test with a hook that calls ``malloc``/``free`` from
inside the allocator's own critical sections, to prove that re-entrant calls take the safe path.
pyslab's locked regions announce themselves through the policy notifications (``slab_added``,
``slab_removed``, ``slab_refilled``, ``block_allocated``, ``block_freed``), which run under the
allocator's lock in the middle of an operation. :class:`ReentrantHooks` is composed in like any
policy and, from each notification, allocates a block of the very slot size being worked on,
writes it, and frees it (every other pair, a block too large for any class, which takes the
large-object path): so the core is entered again exactly where a garbage-collector finalizer or
a signal handler could enter it.

Such a call is re-entrant: pyslab must serve the allocation from libc and defer the free to the
end of the outer call (``stats().reentrant_allocs`` and ``deferred_frees`` count them). A pair
that the core served by its normal path instead is counted in :attr:`ReentrantHooks.normal`,
with the hook's name, because there the nested call ran in the middle of a half-done operation.

The policy breaks, on purpose, the rule that a hook must not call its allocator: it exists to
show the core survives the breach. It overrides no decision, so it composes with any policy.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter

import pyslab
from pyslab import Policy
from pyslab.core import MemorySlab, SizeClass
from pyslab.policy import Heap

__all__ = ["HOOKS_NAME", "ReentrantHooks", "with_hooks"]

HOOKS_NAME = "reentrant-hooks"
"""The name under which specs of this suite compose the hook: ``"dict-lookup+reentrant-hooks"``."""


class ReentrantHooks(Policy):
    """From every notification, allocate a block of the class at hand, write it, and free it.

    Attributes:
        pairs: alloc+free pairs performed.
        calls: hook name -> pairs performed from it.
        normal: hook name -> pairs whose allocation the core did not serve re-entrantly (0 when
            every locked region of the core marks itself busy).
        errors: exceptions raised by the nested calls (none expected).

    A thread-local guard keeps a nested call's own notifications from recursing.
    """

    name = HOOKS_NAME
    description = "test mode: an alloc+free pair from inside every notification hook"

    def __init__(self) -> None:
        self.pairs = 0
        self.calls: Counter[str] = Counter()
        self.normal: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._inside = threading.local()

    def bind(self, heap: Heap) -> None:
        """Remember the allocator itself: the hooks call it back.

        Raises:
            PolicyError: ``heap`` is not a :class:`pyslab.SlabAllocator`.
        """
        if not isinstance(heap, pyslab.SlabAllocator):
            raise pyslab.PolicyError(f"{self.name} needs a SlabAllocator, not {heap!r}")
        super().bind(heap)
        self._allocator = heap
        self._large = heap.size_classes[-1].slot_size * 2 + 8

    def _pair(self, hook: str, size: int) -> None:
        if getattr(self._inside, "active", False):
            return
        self._inside.active = True
        allocator = self._allocator
        if self.pairs % 2:
            size = self._large
        try:
            before = allocator.stats().reentrant_allocs
            address = allocator.alloc(size)
            ctypes.memset(address, 0xA5, size)
            served_reentrantly = allocator.stats().reentrant_allocs == before + 1
            allocator.free(address)
            self.pairs += 1
            self.calls[hook] += 1
            if not served_reentrantly:
                self.normal[hook] += 1
        except BaseException as error:  # recorded and checked by the tests; never swallowed
            self.errors.append(error)
            raise
        finally:
            self._inside.active = False

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """A new slab is being linked in: allocate from its class."""
        self._pair("slab_added", size_class.slot_size)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """A slab is about to be unmapped: allocate from its class."""
        self._pair("slab_removed", size_class.slot_size)

    def slab_refilled(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """A full slab just got a free slot: allocate from its class."""
        self._pair("slab_refilled", size_class.slot_size)

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """A block was just taken: allocate another of the same class."""
        self._pair("block_allocated", slab.slot_size)

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        """A block was just given back: allocate another of the same class."""
        self._pair("block_freed", slab.slot_size)


def with_hooks(spec: str) -> tuple[list[Policy | str], ReentrantHooks | None]:
    """Turn ``"a+b+reentrant-hooks"`` into a ``policy=`` list and the hook instance (or None).

    Every other name is left for the registry to resolve.
    """
    parts: list[Policy | str] = []
    hooks: ReentrantHooks | None = None
    for name in spec.split("+"):
        if name == HOOKS_NAME:
            hooks = ReentrantHooks()
            parts.append(hooks)
        else:
            parts.append(name)
    return parts, hooks

"""The core layer: the allocator and the heap operations, and nothing else.

What it holds: :class:`SlabAllocator` and its heap operations (``alloc``, ``calloc``,
``realloc``, ``free``, ``owns``, ``usable_size``, ``stats``, ``slabs``, ``set_policy``,
``shrink``, ``validate``, ``close``), the call guard (lock, busy flag, backlog), slabs and size
classes, the index of slabs by base address (:class:`SlabIndex`, for policies' O(1) owner
lookup), the size-class layout, page sources and the arena, the large-object services, the
memory view of the address space, the libc bindings, the invariant checker, the statistics
records, fork handling, and the one hook through which features built on an allocator take
part in its whole-heap operations (:class:`HeapClient`).

What it may import: the standard library, :mod:`pyslab.errors` and :mod:`pyslab.policy` (the
policies it binds). Nothing above it: ``interop``, ``objects``, ``observe``, ``lab`` and
``cli`` are its clients, and use only what this module exports.
"""

from __future__ import annotations

from .allocator import SlabAllocator
from .arena import ArenaLargeObjects, ArenaPageSource
from .arguments import as_int
from .clients import HeapClient
from .forking import protect_across_fork
from .libc import PAGE_SIZE
from .memory import BYTES, WORD_SHIFT, WORD_SIZE, WORDS, FreeNode
from .pages import LargeObjects, MmapPageSource, PageSource
from .slab import FreeListCorruptionError, MemorySlab, SizeClass, SlabState
from .slab_index import SlabIndex
from .stats import AllocatorStats, CacheStats, ClassStats

__all__ = [
    "BYTES",
    "PAGE_SIZE",
    "WORDS",
    "WORD_SHIFT",
    "WORD_SIZE",
    "AllocatorStats",
    "ArenaLargeObjects",
    "ArenaPageSource",
    "CacheStats",
    "ClassStats",
    "FreeListCorruptionError",
    "FreeNode",
    "HeapClient",
    "LargeObjects",
    "MemorySlab",
    "MmapPageSource",
    "PageSource",
    "SizeClass",
    "SlabAllocator",
    "SlabIndex",
    "SlabState",
    "as_int",
    "protect_across_fork",
]

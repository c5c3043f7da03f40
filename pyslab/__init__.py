"""pyslab: a slab allocator on real ``mmap``'d memory, written in Python on ctypes.

It hands out real addresses that C code can read and write, in the design of Bonwick's slab
allocator (USENIX 1994) as the Rust ``slab-alloc`` crate builds it for ``GlobalAlloc``, with
every decision a swappable policy.

Glossary
--------
page
    The OS page (``os.sysconf("SC_PAGE_SIZE")``, read at run time, never assumed).
slab
    A ``slab_size`` region (default 4096 bytes, a power-of-two multiple of the page size,
    aligned to its size) carved into equal slots. :class:`MemorySlab`.
slot
    One fixed-size piece of a slab; a *block* is a slot handed out to a caller.
size class
    Every slab of one slot size. A request goes to the smallest class whose slots fit both
    its size and its alignment. :class:`SizeClass`.
free list
    The free slots of a slab that have been used before, linked through their own memory:
    the first word of a free slot is a :class:`FreeNode` holding the next free slot's address.
    Slots never used yet are not linked: they lie past the slab's *bump* pointer.
page source
    Where slabs come from and go back to (default: one ``mmap`` per slab; or one region
    reserved up front, :class:`ArenaPageSource`). :class:`PageSource`.
policy
    A plugin that decides which slab serves an allocation, which slab owns a freed address,
    what happens to an empty slab and where slot 0 starts, and may observe every event.
    :class:`Policy`; registered under the entry-point group ``pyslab.policies``. The default
    is ``dict-lookup+reclaim+thread-cache(magazine=16)`` (O(1) frees, empty slabs given back
    beyond four per class, per-thread magazines in front: no lock on the common path);
    ``first-fit``, the base of every composition, alone walks every slab on each free.
front end
    A policy that wraps the block operations themselves (``thread-cache``'s per-thread
    magazines, ``debug``'s red zones); the allocator's public methods become its own.
system fallback
    libc ``malloc``/``posix_memalign``/``free``, for requests larger than the largest class or
    aligned beyond any class; every such block is tracked so ``free`` routes it back.
typed slab
    :class:`Slab`: a fixed-capacity ``Slab<T, N>`` as Rust writes it, ``capacity`` values of
    one ctypes type in slab memory, addressed by index (``insert``/``remove``/``get``/``view``).
object cache
    :class:`ObjectCache` (``ObjectCache(heap, ctype, ctor, dtor)``): Bonwick's ``kmem_cache``,
    objects whose constructor runs once per slab and which keep their constructed state
    between uses.
client
    A feature built on one allocator (buffers, C functions, object caches): a
    :class:`~pyslab.core.HeapClient` that the allocator involves in ``shrink``, ``close`` and
    ``stats``, without importing it.

Size classes (defaults, 4096-byte slabs)
----------------------------------------
=========  ===============  =========  ===========================
slot size  slots per slab   alignment  serves requests of
=========  ===============  =========  ===========================
8          512              8          1..8 bytes
16         256              16         9..16
32         128              32         17..32
64         64               64         33..64
128        32               128        65..128
256        16               256        129..256
512        8                512        257..512
1024       4                1024       513..1024
=========  ===============  =========  ===========================

Larger requests go to the system fallback. A class's alignment is the lowest set bit of its
slot size (a 48-byte class gives 16), so ``alloc(8, align=64)`` is served by the 64-byte class.

Slab states and transitions
---------------------------
::

             map_slab                alloc (used = capacity)
    (none) ----------> EMPTY --alloc--> PARTIAL ----------------------> FULL
                         ^  <--free (used = 0)--     <--free (used < capacity)--
                         |
                         +-- keep_empty() False, or shrink(): released to the page source

- EMPTY -> PARTIAL: the slab leaves ``SizeClass.empty``.
- PARTIAL -> FULL: if it was ``current``, ``current`` becomes None; the next allocation of the
  class asks the policy's ``select_slab`` (None: map a new slab).
- FULL -> PARTIAL: ``slab_refilled`` is announced; it becomes ``current`` if there was none.
- PARTIAL -> EMPTY: the slab joins ``SizeClass.empty``; the policy's ``keep_empty`` keeps it
  cached or it is released at once (``reclaim``).

Invariants (checked by :meth:`SlabAllocator.validate`)
------------------------------------------------------
1. Every slab's base is aligned to ``slab_size`` and listed in exactly one class; the policy's
   ``find_owner`` finds it. Memory is read or written only at addresses inside such a slab.
2. ``base <= first <= bump <= end <= base + slab_size``, and ``bump`` is at a slot boundary.
3. ``live`` has exactly ``used`` bits set, each for a carved slot start (below ``bump``).
4. The free list holds distinct carved slot starts that are not live, and
   ``len(free list) + used == (bump - first) / slot_size``; so every slot is exactly one of
   live, linked free, or uncarved.
5. ``slab in SizeClass.empty`` exactly when ``used == 0``.
6. ``SizeClass.live`` is the sum of its slabs' ``used``, and ``peak >= live``.
7. ``SizeClass.current`` is None or a slab of the class with a free slot.
8. Outside an allocator call no re-entrant work is pending (the backlog is empty), unless
   settling it ran out of memory: then the next call settles it on its way out.
9. The page source has handed out at least ``slab_size`` bytes per slab, listed or awaiting
   the release of its pages (a release that ran out of memory; retried before the next slab
   is mapped, at ``shrink()`` and at ``close()``).

A failed ``free``/``realloc``/``usable_size`` changes nothing: every check comes before the
first write.

Layers
------
Each layer imports only the layers below it, and only what their ``__init__`` exports::

    cli                      the pyslab command (python -m pyslab)
    observe  lab             reports, heap maps, pictures | workloads, traces, the harness
    objects                  typed slabs, object caches
    interop                  ctypes buffers, install(), C malloc functions
    core                     the allocator and its heap operations
    policy                   the plugin interface, composition, the registry
    errors                   the exception types

``pyslab_plugins`` (the built-in policies and workloads, one per file) is a client of
``policy``, ``core`` and ``lab`` like any third-party plugin package. This module re-exports
what most programs need; everything else is reached through its layer.
"""

from __future__ import annotations

from .core import FreeNode, SlabAllocator
from .errors import (
    AllocatorClosedError,
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    PolicyError,
    PyslabError,
    PyslabWarning,
    UnknownPolicyError,
)
from .interop import buffers, c_functions, current, install, installed, new, uninstall
from .objects import ObjectCache, Slab
from .policy import Policy, PolicySpec, make_policy, policies

__all__ = [
    "AllocatorClosedError",
    "CorruptionError",
    "DoubleFreeError",
    "FreeNode",
    "InvalidFreeError",
    "ObjectCache",
    "Policy",
    "PolicyError",
    "PolicySpec",
    "PyslabError",
    "PyslabWarning",
    "Slab",
    "SlabAllocator",
    "UnknownPolicyError",
    "buffers",
    "c_functions",
    "current",
    "install",
    "installed",
    "make_policy",
    "new",
    "policies",
    "uninstall",
]

__version__ = "0.1.0"

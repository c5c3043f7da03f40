"""The objects layer: typed slabs and object caches, Python objects laid over slab memory.

What it holds: :class:`Slab` (a fixed-capacity slab of one ctypes type, addressed by index)
and :class:`ObjectCache` (Bonwick's ``kmem_cache``: objects constructed once per slab, kept
constructed between uses), with :func:`caches` listing an allocator's open caches.

What it may import: the public interface of :mod:`pyslab.core`, :mod:`pyslab.interop` (a
typed slab uses the installed allocator) and :mod:`pyslab.errors`.
"""

from __future__ import annotations

from .cache import CacheRegistry, ObjectCache, caches
from .typed import Slab

__all__ = ["CacheRegistry", "ObjectCache", "Slab", "caches"]

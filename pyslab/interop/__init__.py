"""The interop layer: slab memory for ctypes objects and for C libraries.

What it holds: slab-backed ctypes buffers and objects (:func:`buffers`, :class:`SlabBuffers`),
the process-wide installation that puts ``ctypes.create_string_buffer`` on slab memory
(:func:`install`, :func:`uninstall`, :func:`installed`, :func:`current`, :func:`new`), and C
function pointers for ``malloc``, ``calloc``, ``realloc`` and ``free`` served by an allocator
(:func:`c_functions`, :class:`CFunctions`).

What it may import: the public interface of :mod:`pyslab.core` and :mod:`pyslab.errors`.
Each feature is a :class:`~pyslab.core.HeapClient` of the allocator it serves.
"""

from __future__ import annotations

from .cabi import (
    CALLOC_FUNC,
    FREE_FUNC,
    MALLOC_FUNC,
    REALLOC_FUNC,
    CallbackFailure,
    CFunctionError,
    CFunctions,
    c_functions,
)
from .installer import (
    create_string_buffer,
    create_unicode_buffer,
    current,
    default_allocator,
    install,
    installed,
    new,
    uninstall,
)
from .slab_buffers import CT, SlabBuffers, buffers, live_objects

__all__ = [
    "CALLOC_FUNC",
    "CT",
    "FREE_FUNC",
    "MALLOC_FUNC",
    "REALLOC_FUNC",
    "CFunctionError",
    "CFunctions",
    "CallbackFailure",
    "SlabBuffers",
    "buffers",
    "c_functions",
    "create_string_buffer",
    "create_unicode_buffer",
    "current",
    "default_allocator",
    "install",
    "installed",
    "live_objects",
    "new",
    "uninstall",
]

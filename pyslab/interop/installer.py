"""The process-wide allocator: ``install``, ``uninstall``, ``installed`` and ``current``.

The Rust original is a ``#[global_allocator]``. Python's own objects cannot move to another
allocator, but the memory a program asks ctypes for can: while an allocator is installed, the
module attributes ``ctypes.create_string_buffer`` and ``ctypes.create_unicode_buffer`` are the
bound methods of its :class:`~pyslab.interop.SlabBuffers`, so every call through them
(``ctypes.create_string_buffer(...)`` in any module) returns a buffer in slab memory.

What is not slab-backed: names bound before :func:`install` (``from ctypes import
create_string_buffer``, and the deprecated alias ``ctypes.c_buffer``, which ctypes binds at
import), instances made by calling a ctypes type (``(c_char * 8)()``, ``c_int(3)``: use
:func:`new`), and Python objects in general.

Also here: :func:`create_string_buffer`, :func:`create_unicode_buffer` and :func:`new`, which
use the installed allocator, or when none is, the :func:`default_allocator`.

Example::

    with pyslab.installed(policy="dict-lookup") as alloc:
        buf = ctypes.create_string_buffer(b"hello")   # in a slab of alloc
        assert alloc.owns(ctypes.addressof(buf))
    # ctypes' own functions are back; buf stays valid, and goes back to alloc when collected
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from pyslab.core import SlabAllocator
from pyslab.errors import AllocatorClosedError

from .slab_buffers import CT, buffers

__all__ = [
    "create_string_buffer",
    "create_unicode_buffer",
    "current",
    "default_allocator",
    "install",
    "installed",
    "new",
    "uninstall",
]

_PATCHED: Final = ("create_string_buffer", "create_unicode_buffer")
"""The ctypes module attributes that install() replaces."""

_lock: Final = threading.RLock()
_installed: SlabAllocator | None = None
_originals: dict[str, object] = {}
"""ctypes attribute -> the value install() found there first (ctypes' own), while installed."""
_ours: dict[str, object] = {}
"""ctypes attribute -> the value install() put there, while installed."""
_default: SlabAllocator | None = None


def install(allocator: SlabAllocator | None = None, /, **config: Any) -> SlabAllocator:
    """Make ``allocator`` (or a new ``SlabAllocator(**config)``) the process-wide allocator.

    From this call on, ``ctypes.create_string_buffer`` and ``ctypes.create_unicode_buffer``
    return buffers in its slabs. Installing again replaces the allocator: buffers made before
    keep the allocator that made them. Nothing is closed, ever: buffers may outlive the
    installation.

    Returns:
        The installed allocator.

    Raises:
        TypeError: ``allocator`` is not a SlabAllocator, both an allocator and ``config`` are
            given, or ``config`` has an unknown key (the message names it).
        ValueError, UnknownPolicyError: ``config`` is invalid (as ``SlabAllocator(**config)``).
        AllocatorClosedError: ``allocator`` was closed.

    Complexity: O(1) (plus building the allocator).
    """
    global _installed
    if allocator is None:
        allocator = SlabAllocator(**config)
    elif config:
        raise TypeError(
            f"install() takes an allocator or a configuration, not both: got {allocator!r} "
            f"and {sorted(config)}"
        )
    elif not isinstance(allocator, SlabAllocator):
        raise TypeError(f"install() takes a SlabAllocator, not {allocator!r}")
    if allocator.closed:
        raise AllocatorClosedError(f"install() of a closed allocator {allocator!r}")
    made = buffers(allocator)
    replacements = {
        "create_string_buffer": made.create_string_buffer,
        "create_unicode_buffer": made.create_unicode_buffer,
    }
    with _lock:
        for name in _PATCHED:
            if name not in _originals:
                _originals[name] = getattr(ctypes, name)
            setattr(ctypes, name, replacements[name])
            _ours[name] = replacements[name]
        _installed = allocator
    return allocator


def uninstall() -> SlabAllocator | None:
    """Put ctypes' own functions back; return the allocator that was installed (or None).

    An attribute that someone else replaced after :func:`install` is left as they set it.
    Buffers made while installed stay valid, and go back to their allocator when collected.
    Calling it when nothing is installed does nothing.

    Complexity: O(1).
    """
    global _installed
    with _lock:
        previous = _installed
        for name, ours in _ours.items():
            if getattr(ctypes, name) is ours:
                setattr(ctypes, name, _originals[name])
        _ours.clear()
        _originals.clear()
        _installed = None
        return previous


@contextmanager
def installed(
    allocator: SlabAllocator | None = None, /, **config: Any
) -> Iterator[SlabAllocator]:
    """Install an allocator for the ``with`` block, then restore what was there before.

    ``with pyslab.installed(policy="dict-lookup") as alloc: ...``. On exit the allocator
    installed before the block (if any, and not closed since) is installed again, otherwise
    ctypes' own functions are restored. Blocks nest; they are meant for one thread at a time,
    as the installation is process-wide.

    Raises:
        As :func:`install`, on entry.
    """
    with _lock:
        previous = _installed
    chosen = install(allocator, **config)
    try:
        yield chosen
    finally:
        if previous is not None and not previous.closed:
            install(previous)
        else:
            uninstall()


def current() -> SlabAllocator | None:
    """The installed allocator, or None. Complexity: O(1)."""
    return _installed


def default_allocator() -> SlabAllocator:
    """The allocator :func:`create_string_buffer` and friends use when none is installed.

    Built on first use with the default configuration, and kept for the life of the process.

    Complexity: O(1).
    """
    global _default
    allocator = _default
    if allocator is None:
        with _lock:
            if _default is None:
                _default = SlabAllocator()
            allocator = _default
    return allocator


def _active() -> SlabAllocator:
    return _installed or default_allocator()


def create_string_buffer(init: bytes | int, size: int | None = None) -> ctypes.Array[ctypes.c_char]:
    """``ctypes.create_string_buffer`` in slab memory, installed or not.

    Uses the installed allocator, or the :func:`default_allocator`.

    Raises:
        As :meth:`SlabBuffers.create_string_buffer`.

    Complexity: O(1) plus zeroing the buffer.
    """
    return buffers(_active()).create_string_buffer(init, size)


def create_unicode_buffer(init: str | int, size: int | None = None) -> ctypes.Array[ctypes.c_wchar]:
    """``ctypes.create_unicode_buffer`` in slab memory, installed or not.

    Raises:
        As :meth:`SlabBuffers.create_unicode_buffer`.

    Complexity: O(1) plus zeroing the buffer.
    """
    return buffers(_active()).create_unicode_buffer(init, size)


def new(ctype: type[CT], /, *init: Any, **fields: Any) -> CT:
    """``ctype(*init, **fields)`` in slab memory (any ctypes data type), installed or not.

    Raises:
        As :meth:`SlabBuffers.new`.

    Complexity: O(size of the type), plus the type's ``__init__``.
    """
    return buffers(_active()).new(ctype, *init, **fields)

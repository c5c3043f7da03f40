"""Raw access to process memory: the free-list node layout and a word view of the address space.

``FreeNode`` is the layout of a free slot: its first pointer-sized word holds the address of the
next free slot of the same slab, or 0 at the end of the list. C code, or
``ctypes.cast(address, POINTER(FreeNode))``, can walk any pyslab free list.

The allocator's hot path reads and writes those next pointers through ``WORDS``, a
``memoryview`` of pointer-sized unsigned integers laid over the whole address space:
``WORDS[address >> WORD_SHIFT]`` is the word at ``address``. Indexing a memoryview costs a few
tens of nanoseconds where ``FreeNode.from_address`` costs several hundred, and no Python object
exists per slot. ``BYTES`` is the same view by byte. Both are shared by every user of the core
(the ``debug`` policy reads and fills slots through them): one view of the address space per
process. They are only ever indexed at addresses proven to lie in a slab (invariant 1 of the
package docstring) or in a block handed out; an index anywhere else would touch unmapped
memory.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

from .libc import POINTER_SIZE

__all__ = ["BYTES", "WORDS", "WORD_SHIFT", "WORD_SIZE", "FreeNode", "copy", "fill"]


class FreeNode(ctypes.Structure):
    """A free slot seen as C sees it: one pointer to the next free slot (NULL ends the list)."""

    _fields_ = [("next", ctypes.c_void_p)]


WORD_SIZE: Final[int] = POINTER_SIZE
"""Bytes in a word: a pointer, a free-list link, the unit of the live bitmaps."""
WORD_SHIFT: Final[int] = POINTER_SIZE.bit_length() - 1
"""``address >> WORD_SHIFT`` is the index of the word at ``address`` in :data:`WORDS`."""
# Covers [0, 2**62): every user-space address of x86-64 (47 or 56 bits) and aarch64 (48 or 52).
_SPAN: Final[int] = 1 << (62 if sys.maxsize > 2**32 else 30)
_ADDRESS_SPACE = (ctypes.c_char * _SPAN).from_address(0)
BYTES: Final[memoryview[int]] = memoryview(_ADDRESS_SPACE).cast("B")
WORDS: Final[memoryview[int]] = BYTES.cast("P")  # "P": a native pointer-sized word

assert ctypes.sizeof(FreeNode) == POINTER_SIZE, "a free slot must hold exactly one pointer"


def fill(address: int, byte: int, size: int) -> None:
    """Set ``size`` bytes at ``address`` to ``byte`` (C ``memset``).

    Raises:
        MemoryError: no memory for ctypes to pass the arguments; nothing was written.
    """
    try:
        ctypes.memset(address, byte, size)
    except ctypes.ArgumentError as error:  # the only way converting checked ints can fail
        raise MemoryError(f"memset: no memory to pass the arguments ({error})") from error


def copy(destination: int, source: int, size: int) -> None:
    """Copy ``size`` bytes, ranges may overlap (C ``memmove``).

    Raises:
        MemoryError: no memory for ctypes to pass the arguments; nothing was copied.
    """
    try:
        ctypes.memmove(destination, source, size)
    except ctypes.ArgumentError as error:  # the only way converting checked ints can fail
        raise MemoryError(f"memmove: no memory to pass the arguments ({error})") from error

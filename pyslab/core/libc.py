"""libc bound through ctypes: the only place pyslab talks to the system allocator and the kernel.

Every function here turns a C failure into a Python exception: ``errno`` becomes ``OSError``,
and ``ENOMEM`` becomes ``MemoryError``, so that callers never see a ``-1`` or a ``NULL``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap as _mmap_constants
import os
from typing import Final

__all__ = [
    "PAGE_SIZE",
    "POINTER_SIZE",
    "madvise_dontneed",
    "map_anonymous",
    "system_free",
    "system_malloc",
    "unmap",
]

PAGE_SIZE: Final[int] = os.sysconf("SC_PAGE_SIZE")
POINTER_SIZE: Final[int] = ctypes.sizeof(ctypes.c_void_p)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]
_free = _libc.free
_free.restype = None
_free.argtypes = [ctypes.c_void_p]
_posix_memalign = _libc.posix_memalign
_posix_memalign.restype = ctypes.c_int
_posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]

_MAP_FAILED: Final[int] = ctypes.c_void_p(-1).value or 0
_PROT_RW: Final[int] = _mmap_constants.PROT_READ | _mmap_constants.PROT_WRITE
_MAP_PRIVATE_ANON: Final[int] = _mmap_constants.MAP_PRIVATE | _mmap_constants.MAP_ANONYMOUS
_MADV_DONTNEED: Final[int] = getattr(_mmap_constants, "MADV_DONTNEED", 4)
# PTRDIFF_MAX: no object may be larger, and larger values would wrap in a C size_t.
_LARGEST_REQUEST: Final[int] = (1 << (8 * POINTER_SIZE - 1)) - 1
# malloc's own guarantee: glibc returns blocks aligned to 2 * sizeof(size_t).
MALLOC_ALIGNMENT: Final[int] = 2 * POINTER_SIZE


def _argument_failed(call: str, error: ctypes.ArgumentError) -> MemoryError:
    """The error for a libc call whose arguments ctypes could not convert.

    Every argument pyslab passes is an int it has checked, which ctypes converts by building
    a small object per argument: the conversion can fail only when that object cannot be
    allocated, and ctypes then reports ``ArgumentError`` ("argument 2: MemoryError"). Out of
    memory is what it is, and ``MemoryError`` what the caller is promised.
    """
    return MemoryError(f"{call}: no memory to pass the arguments ({error})")


def _raise_errno(call: str, err: int, what: str) -> None:
    if err == errno.ENOMEM:
        raise MemoryError(f"{call} failed for {what}: out of memory (ENOMEM)")
    raise OSError(err, f"{call} failed for {what}: {os.strerror(err)}")


def map_anonymous(size: int) -> int:
    """Map ``size`` bytes of fresh zeroed private memory and return its page-aligned address.

    Raises:
        MemoryError: the kernel refused for lack of memory (``ENOMEM``).
        OSError: any other ``mmap`` failure, with its errno.

    Complexity: one system call.
    """
    try:
        address = _mmap(None, size, _PROT_RW, _MAP_PRIVATE_ANON, -1, 0)
    except ctypes.ArgumentError as error:
        raise _argument_failed("mmap", error) from error
    if address is None or address == _MAP_FAILED:
        _raise_errno("mmap", ctypes.get_errno(), f"{size} bytes")
    return int(address)


def unmap(address: int, size: int) -> None:
    """Return ``size`` bytes at ``address`` to the kernel.

    Raises:
        OSError: ``munmap`` failed (the range was not page aligned, say).

    Complexity: one system call.
    """
    try:
        failed = _munmap(address, size)
    except ctypes.ArgumentError as error:
        raise _argument_failed("munmap", error) from error
    if failed:
        _raise_errno("munmap", ctypes.get_errno(), f"{size} bytes at {address:#x}")


def madvise_dontneed(address: int, size: int) -> None:
    """Tell the kernel the pages are no longer needed: they stay mapped but their RSS goes.

    Raises:
        OSError: ``madvise`` failed.
    """
    try:
        failed = _madvise(address, size, _MADV_DONTNEED)
    except ctypes.ArgumentError as error:
        raise _argument_failed("madvise", error) from error
    if failed:
        _raise_errno("madvise", ctypes.get_errno(), f"{size} bytes at {address:#x}")


def system_malloc(size: int, alignment: int) -> int:
    """Allocate ``size`` bytes from libc aligned to ``alignment`` (a power of two).

    Raises:
        MemoryError: libc returned NULL, or ``size`` or ``alignment`` is beyond what any
            address space holds (ctypes would silently keep only the low bits of a ``size_t``).

    Complexity: one libc call.
    """
    if size > _LARGEST_REQUEST:
        raise MemoryError(f"a block of {size} bytes exceeds the address space")
    if alignment > _LARGEST_REQUEST:
        raise MemoryError(f"an alignment of {alignment} exceeds the address space")
    try:
        if alignment <= MALLOC_ALIGNMENT:
            address = _malloc(size)
            if not address:
                raise MemoryError(f"malloc({size}) returned NULL")
            return int(address)
        out = ctypes.c_void_p()
        err = _posix_memalign(ctypes.byref(out), max(alignment, POINTER_SIZE), size)
    except ctypes.ArgumentError as error:
        raise _argument_failed("malloc", error) from error
    if err != 0 or not out.value:
        _raise_errno("posix_memalign", err or errno.ENOMEM, f"{size} bytes aligned to {alignment}")
    return int(out.value or 0)


def system_free(address: int) -> None:
    """Give a block from :func:`system_malloc` back to libc. Complexity: one libc call.

    Raises:
        MemoryError: no memory to pass the address to libc; the block stays allocated.
    """
    try:
        _free(address)
    except ctypes.ArgumentError as error:
        raise _argument_failed("free", error) from error

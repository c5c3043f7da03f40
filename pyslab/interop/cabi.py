"""The C-callable allocator: ``malloc``/``calloc``/``realloc``/``free`` as C function pointers.

:func:`c_functions` returns the :class:`CFunctions` of an allocator, whose four members are ctypes
``CFUNCTYPE`` objects, ready to be stored in a C library's allocator hooks (expat's
``XML_Memory_Handling_Suite``, a ``set_allocator(malloc, realloc, free)`` function...). The C
side calls plain C function pointers; ctypes takes the GIL and runs the Python allocator.

C semantics, as chosen here:

- ``malloc(0)`` returns a unique pointer to a block of one byte, which ``free`` accepts (glibc
  does the same). ``calloc(0, n)`` and ``calloc(n, 0)`` likewise, zeroed.
- ``realloc(NULL, n)`` is ``malloc(n)``; ``realloc(p, 0)`` shrinks ``p`` to a one-byte block and
  returns it (never frees and returns NULL, so that no caller convention leaks or double-frees).
- ``free(NULL)`` does nothing.
- Blocks of 16 bytes or more are aligned to 16 (``alignof(max_align_t)`` on x86-64 and
  aarch64); smaller blocks to 8, which every object that fits in them needs at most.
- On failure (out of memory, ``calloc`` overflow, a closed allocator, a pointer pyslab did not
  hand out) the function returns NULL (``free`` returns nothing) and leaves every block as it
  was.

An exception never crosses into C: every one, ``KeyboardInterrupt`` included, is caught and
recorded in :attr:`CFunctions.failures` (with the call that raised it), and
:meth:`CFunctions.check` raises it in Python when the caller is ready to hear it.

The functions may be called from any thread, including threads that C created and Python
never saw: ctypes gives each such thread a thread state while the callback runs. They stay
valid as long as the :class:`CFunctions` object, which the allocator keeps for its lifetime.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

from pyslab.core import WORD_SIZE, HeapClient, SlabAllocator
from pyslab.errors import PyslabError

__all__ = [
    "CALLOC_FUNC",
    "FREE_FUNC",
    "MALLOC_FUNC",
    "REALLOC_FUNC",
    "CFunctionError",
    "CFunctions",
    "CallbackFailure",
    "c_functions",
]

MALLOC_FUNC: Final = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)
"""``void *(*)(size_t size)``"""
CALLOC_FUNC: Final = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
"""``void *(*)(size_t count, size_t size)``"""
REALLOC_FUNC: Final = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
"""``void *(*)(void *ptr, size_t size)``"""
FREE_FUNC: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
"""``void (*)(void *ptr)``"""

_WORD: Final[int] = WORD_SIZE
_MAX_ALIGN: Final[int] = 2 * _WORD
"""``alignof(max_align_t)`` on the 64-bit Linux ABIs pyslab runs on."""
_SIZE_MAX: Final[int] = (1 << (8 * ctypes.sizeof(ctypes.c_size_t))) - 1
_KEPT_FAILURES: Final[int] = 100


class CFunctionError(PyslabError):
    """A call from C into pyslab's allocator functions failed; raised by ``check()``.

    The first recorded failure is the ``__cause__``.
    """


@dataclass(frozen=True)
class CallbackFailure:
    """One failed call from C: what was called, with which arguments, and what it raised."""

    call: str
    """The call as C made it, e.g. ``malloc(4096)`` or ``free(0x7f...)``."""
    error: BaseException
    """The exception the allocator raised (the function returned NULL instead)."""
    thread: str
    """The name of the thread the call came from."""

    def __str__(self) -> str:
        return f"{self.call} in thread {self.thread!r}: {type(self.error).__name__}: {self.error}"


@final
class CFunctions(HeapClient):
    """C function pointers serving ``malloc``/``calloc``/``realloc``/``free`` from one allocator.

    Get it from :func:`c_functions`: one per allocator, kept alive by it. The
    members are ctypes function objects of the types :data:`MALLOC_FUNC`, :data:`CALLOC_FUNC`,
    :data:`REALLOC_FUNC` and :data:`FREE_FUNC`; store them in a C structure field of the same
    type, pass them as arguments, or take their address with ``ctypes.cast(f, c_void_p)``.
    """

    __slots__ = (
        "__weakref__", "_lock", "calloc", "failure_count", "failures", "free",
        "malloc", "realloc",
    )

    def __init__(self, allocator: SlabAllocator) -> None:
        HeapClient.__init__(self, allocator)
        self._lock: Final = threading.Lock()
        self.failures: list[CallbackFailure] = []
        """The first 100 failures since the last :meth:`clear` (oldest first)."""
        self.failure_count = 0
        """Every failure since the last :meth:`clear`, counted even when not kept."""
        self.malloc: Final = MALLOC_FUNC(_malloc(allocator, self._record))
        """``void *malloc(size_t size)``"""
        self.calloc: Final = CALLOC_FUNC(_calloc(allocator, self._record))
        """``void *calloc(size_t count, size_t size)``"""
        self.realloc: Final = REALLOC_FUNC(_realloc(allocator, self._record))
        """``void *realloc(void *ptr, size_t size)``"""
        self.free: Final = FREE_FUNC(_free(allocator, self._record))
        """``void free(void *ptr)``"""

    @property
    def allocator(self) -> SlabAllocator:
        """The allocator that serves the calls."""
        return self.heap

    def address(self, name: str) -> int:
        """The C address of the function ``name`` (``"malloc"``, ``"calloc"``, ...).

        Raises:
            ValueError: ``name`` is not one of the four functions.
        """
        if name not in ("malloc", "calloc", "realloc", "free"):
            raise ValueError(f"no C function {name!r}: malloc, calloc, realloc or free")
        return ctypes.cast(getattr(self, name), ctypes.c_void_p).value or 0

    def check(self) -> None:
        """Raise if any call from C failed since the last :meth:`clear`, then clear.

        Raises:
            CFunctionError: naming the number of failures and the first one, which is its
                ``__cause__``.
        """
        with self._lock:
            failures, count = self.failures, self.failure_count
            self.failures, self.failure_count = [], 0
        if failures:
            raise CFunctionError(
                f"{count} call(s) from C into the allocator failed; the first: {failures[0]}"
            ) from failures[0].error

    def clear(self) -> None:
        """Forget the recorded failures."""
        with self._lock:
            self.failures, self.failure_count = [], 0

    def _record(self, call: str, error: BaseException) -> None:
        # Runs inside a callback, so it must not raise, whatever happens (out of memory while
        # recording loses the record).
        with contextlib.suppress(BaseException):
            failure = CallbackFailure(call, error, threading.current_thread().name)
            with self._lock:
                self.failure_count += 1
                if len(self.failures) < _KEPT_FAILURES:
                    self.failures.append(failure)

    def __repr__(self) -> str:
        return f"<CFunctions of {self.heap!r}, {self.failure_count} failures>"


_Record = Callable[[str, BaseException], None]


def _alignment(size: int) -> int:
    """What malloc guarantees a block of ``size`` bytes: ``max_align_t``, or less for a block
    too small to hold any object that needs it."""
    return _MAX_ALIGN if size >= _MAX_ALIGN else _WORD


# The four callbacks. Each catches BaseException: nothing may unwind into C frames. The
# allocator's methods are looked up on each call: set_policy may replace them (front ends).


def _malloc(allocator: SlabAllocator, record: _Record) -> Callable[[int], int | None]:
    def malloc(size: int) -> int | None:
        try:
            return allocator.alloc(size or 1, _alignment(size))
        except BaseException as error:
            record(f"malloc({size})", error)
            return None

    return malloc


def _calloc(allocator: SlabAllocator, record: _Record) -> Callable[[int, int], int | None]:
    def calloc_(count: int, size: int) -> int | None:
        try:
            total = count * size
            if total > _SIZE_MAX:
                raise MemoryError(f"calloc({count}, {size}): the product overflows size_t")
            if total == 0:
                return allocator.calloc(1, 1)
            return allocator.calloc(count, size, _alignment(total))
        except BaseException as error:
            record(f"calloc({count}, {size})", error)
            return None

    return calloc_


def _realloc(allocator: SlabAllocator, record: _Record) -> Callable[[int | None, int], int | None]:
    def realloc_(ptr: int | None, size: int) -> int | None:
        try:
            return allocator.realloc(ptr, size or 1, _alignment(size))
        except BaseException as error:
            record(f"realloc({_hex(ptr)}, {size})", error)
            return None

    return realloc_


def _free(allocator: SlabAllocator, record: _Record) -> Callable[[int | None], None]:
    def free_(ptr: int | None) -> None:
        try:
            allocator.free(ptr)
        except BaseException as error:
            record(f"free({_hex(ptr)})", error)

    return free_


def _hex(ptr: int | None) -> str:
    return "NULL" if not ptr else f"{ptr:#x}"


def c_functions(heap: SlabAllocator) -> CFunctions:
    """The :class:`CFunctions` of ``heap``: made on first use, then kept by it.

    Racing threads all get the one instance, before any C code could have seen the pointers of
    another. Complexity: O(1) (four ctypes callbacks built on the first call).
    """
    return heap.client(CFunctions)

"""Slab-backed ctypes objects: buffers that behave exactly like ctypes' own, and ``new``.

A buffer is made the way ctypes makes one, except for where its bytes live: the array type is
the very type ctypes uses (``c_char * n``, cached by ctypes itself), and the instance is laid
over a slab block with ``from_address``. So ``type``, ``sizeof``, ``.value``, ``.raw``,
indexing, slicing, ``byref``, ``cast``, ``pointer``, foreign calls and the buffer protocol are
ctypes' own code running on slab memory. The arguments are checked by the same expressions, in
the same order, as ``ctypes.create_string_buffer``/``create_unicode_buffer``, so bad arguments
raise the same errors, and the same audit events are raised.

Lifetime
--------
An object built by ``from_address`` does not own its memory, so each one is tied to its block
by a weak reference with a callback, registered in a process-wide table until the callback
runs. The callback frees the block when the object is collected, by reference counting or by
the cycle collector (the table keeps the weak reference itself alive, so the collector always
runs it). It cannot run earlier: everything derived from the object keeps the object alive:

- ``memoryview(buf)`` holds the exporting object;
- ``pointer(buf)``, ``cast(buf, ...)``, ``T.from_buffer(buf)`` store it in their ``_objects``;
- ``byref(buf)`` holds it in the argument object.

Only a bare address (``addressof``, ``cast(...).value``) outlives it, as with ctypes' own
buffers. The table entry holds the allocator, so a buffer keeps the allocator that made it
alive and is freed to it, whatever is installed by then. A free that the collector triggers in
the middle of another call of the same allocator takes the core's re-entrant path (deferred).

Closing the allocator while objects live never leaves them dangling: :class:`SlabBuffers` is a
:class:`~pyslab.core.HeapClient`, and its ``pinned_blocks`` names the block of every entry of
the table, so ``close()`` keeps the slab (or large block) holding each one mapped. The object
reads and writes its bytes as before; when it dies, its callback frees the block as usual, and
the allocator unmaps the slab once no other such block is left in it. Typed slabs and object
caches tie their memory to their ctypes objects with :meth:`SlabBuffers.adopt`, the same
table, so the same holds for them.

Invariant: each entry of the table is removed once, by its own callback, which then frees its
block once; so every block ``close()`` retains for an entry is handed back exactly once.

Differences from ctypes' own buffers (the memory is borrowed, not owned): ``ctypes.resize``
refuses them, and ``_b_needsfree_`` is 0. Copies (``copy.copy(buf)``, ``bytes(buf)``) are
ordinary objects, in ordinary memory. Closing an allocator on one thread while another creates
objects from it is a race of the program (the object made may be over released memory), as is
any use of an allocator concurrent with its close: :meth:`SlabBuffers.adopt` alone is safe
against it.
"""

from __future__ import annotations

import ctypes
import operator
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from pyslab.core import BYTES, HeapClient, SlabAllocator
from pyslab.errors import AllocatorClosedError, PyslabError, PyslabWarning

if TYPE_CHECKING:
    from ctypes import _CData

__all__ = ["CT", "SlabBuffers", "buffers", "live_objects"]

CT = TypeVar("CT", bound="_CData")
"""Any ctypes data type (Structure, Union, array, pointer, simple type)."""

_WORD: Final[int] = ctypes.sizeof(ctypes.c_void_p)
_CACHED_BYTES: Final[int] = 1024
"""Buffers of at most this many bytes have their array type, constructor and a zero block
cached per length; larger ones are rare, and their own cost dwarfs the lookups."""
_WCHAR_SIZE: Final[int] = ctypes.sizeof(ctypes.c_wchar)
_DATA_TYPES: Final = (
    ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._Pointer,
)

_audit: Final = sys.audit
_memset: Final = ctypes.memset
_new_ref: Final = weakref.ref

# One shape per array length: (from_address, bytes to allocate, ``sizeof`` zero bytes or None).
_Shape = tuple[Callable[[int], Any], int, bytes | None]
_char_shapes: dict[int, _Shape] = {}
_wchar_shapes: dict[int, _Shape] = {}

_live: Final[dict[int, tuple[weakref.ref[Any], int, SlabAllocator]]] = {}
"""id(weak reference) -> (the weak reference, block address, allocator), for every live
slab-backed object. Keeps each weak reference, and so its callback, alive."""


def _release(
    ref: weakref.ref[Any],
    _live: dict[int, tuple[weakref.ref[Any], int, SlabAllocator]] = _live,
) -> None:
    """Weak-reference callback: the object died, its block goes back to its allocator.

    After the allocator's ``close()`` the free hands a retained block back (the allocator
    unmaps its slab once no other retained block is in it).
    """
    entry = _live.pop(id(ref), None)
    if entry is None:
        return  # never: only this callback removes the entry
    _, address, allocator = entry
    try:
        allocator.free(address)
    except AllocatorClosedError:
        # The entry was removed while close() ran on another thread but before it asked for
        # the pinned blocks: the block went back with every other one.
        pass
    except PyslabError as error:  # no caller to raise to: record it as the core does
        allocator.deferred_errors.append(error)
        warnings.warn(f"freeing a ctypes buffer failed: {error}", PyslabWarning, stacklevel=1)


def live_objects() -> int:
    """How many slab-backed ctypes objects are alive, over every allocator: buffers, ``new()``
    objects and the owners given to :meth:`SlabBuffers.adopt` (typed slabs' slot arrays,
    object caches' blocks). Complexity: O(1)."""
    return len(_live)


def _shape(item: type[ctypes.c_char] | type[ctypes.c_wchar], length: int) -> _Shape:
    """The shape of ``item * length``, cached for small buffers.

    Raises:
        TypeError, ValueError, OverflowError: exactly as ``item * length`` does.
    """
    array_type = item * length  # the very expression ctypes evaluates, so the very errors
    nbytes = ctypes.sizeof(array_type)
    if nbytes > _CACHED_BYTES:
        return array_type.from_address, nbytes, None
    shape: _Shape = (array_type.from_address, nbytes or 1, bytes(nbytes))
    # Keyed by the plain int length: ``length`` may be any object with __index__.
    (_char_shapes if item is ctypes.c_char else _wchar_shapes)[operator.index(length)] = shape
    return shape


@final
class SlabBuffers(HeapClient):
    """Makes slab-backed ctypes objects from one allocator. Get one with :func:`buffers`.

    Its bound methods are what :func:`pyslab.install` puts in place of
    ``ctypes.create_string_buffer`` and ``ctypes.create_unicode_buffer``.
    """

    # heap.alloc is looked up on each call, never cached: set_policy may put a front end's
    # operations in its place.
    __slots__ = ()

    @property
    def allocator(self) -> SlabAllocator:
        """The allocator every object made here comes from, and goes back to."""
        return self.heap

    def pinned_blocks(self) -> Iterable[int]:
        """The block of every live slab-backed object of this allocator (its ``close()``
        keeps them mapped; each object's callback frees its block when the object dies).

        Complexity: O(live slab-backed objects, over every allocator).
        """
        heap = self.heap
        while True:
            try:
                # A copy first: a callback run by the collector meanwhile removes entries.
                entries = list(_live.values())
                break
            except RuntimeError:  # the table changed size while it was copied: copy again
                continue
        return [address for _, address, owner in entries if owner is heap]

    def adopt(self, owner: object, address: int) -> None:
        """Make ``owner`` own the block at ``address``, as a buffer owns its block.

        For a ctypes object built over a block of this allocator (``from_address`` owns no
        memory): the block is freed when ``owner`` is collected, and the allocator's
        ``close()`` keeps it mapped while ``owner`` lives, so that ``owner``, and everything
        that keeps it alive (``from_buffer`` views, ``memoryview``), never reads unmapped
        memory. ``address`` must come from this allocator's ``alloc``; nothing else may free
        it.

        Raises:
            AllocatorClosedError: the allocator was closed (the block went back with it, even
                if it was allocated before: do not use it); nothing is recorded.
            TypeError: ``owner`` takes no weak references.

        Complexity: O(1): one weak reference and one table entry, under the allocator's lock
        (so that a concurrent ``close()`` either sees the entry or has finished).
        """
        ref = _new_ref(owner, _release)
        heap = self.heap
        with heap.lock:
            if heap.closed:
                raise AllocatorClosedError(
                    f"adopt() of the block at {address:#x} of a closed allocator {heap!r}"
                )
            _live[id(ref)] = (ref, address, heap)

    def create_string_buffer(self, init: bytes | int, size: int | None = None) -> ctypes.Array[
        ctypes.c_char
    ]:
        """``ctypes.create_string_buffer`` with its bytes in slab memory.

        ``init`` is the initial contents (``bytes``; the buffer is ``len(init) + 1`` long
        unless ``size`` says otherwise) or the length (``int``; ``size`` is then ignored, as
        in ctypes). The buffer is zero-filled past the contents.

        Raises:
            TypeError: ``init`` is neither bytes nor int (the message is ``init``, as ctypes').
            ValueError: a negative length, or ``init`` longer than ``size`` ("byte string too
                long").
            MemoryError: the allocator is out of memory.
            AllocatorClosedError: the allocator was closed.

        Complexity: O(1) plus zeroing the buffer; for up to 1024 bytes, two dict lookups, one
        slab allocation and one weak reference.
        """
        # One frame, no helper calls: this is the path that install() puts behind ctypes.
        contents: bytes | None
        if isinstance(init, bytes):
            if size is None:
                size = len(init) + 1
            _audit("ctypes.create_string_buffer", init, size)
            contents, length = init, size
        elif isinstance(init, int):
            _audit("ctypes.create_string_buffer", None, init)
            contents, length = None, init
        else:
            raise TypeError(init)
        shape = _char_shapes.get(length) if type(length) is int else None
        from_address, nbytes, zeros = shape or _shape(ctypes.c_char, length)
        allocator = self.heap
        address = allocator.alloc(nbytes)
        try:
            buf: ctypes.Array[ctypes.c_char] = from_address(address)
            ref = _new_ref(buf, _release)
        except BaseException:
            allocator.free(address)
            raise
        _live[id(ref)] = (ref, address, allocator)
        if zeros is None:
            _memset(address, 0, nbytes)
        else:
            buf.raw = zeros
        if contents is not None:
            buf.value = contents  # raises "byte string too long" as ctypes does
        return buf

    def create_unicode_buffer(self, init: str | int, size: int | None = None) -> ctypes.Array[
        ctypes.c_wchar
    ]:
        """``ctypes.create_unicode_buffer`` with its characters in slab memory.

        ``init`` is the initial text (``str``; the buffer holds it and a NUL, counting a
        surrogate pair per non-BMP character where ``wchar_t`` has 16 bits) or the length.

        Raises:
            TypeError: ``init`` is neither str nor int.
            ValueError: a negative length, or ``init`` longer than ``size`` ("string too long").
            MemoryError, AllocatorClosedError: as :meth:`create_string_buffer`.

        Complexity: as :meth:`create_string_buffer`.
        """
        contents: str | None
        if isinstance(init, str):
            if size is None:
                if _WCHAR_SIZE == 2:
                    size = sum(2 if ord(c) > 0xFFFF else 1 for c in init) + 1
                else:
                    size = len(init) + 1
            _audit("ctypes.create_unicode_buffer", init, size)
            contents, length = init, size
        elif isinstance(init, int):
            _audit("ctypes.create_unicode_buffer", None, init)
            contents, length = None, init
        else:
            raise TypeError(init)
        shape = _wchar_shapes.get(length) if type(length) is int else None
        from_address, nbytes, zeros = shape or _shape(ctypes.c_wchar, length)
        allocator = self.heap
        address = allocator.alloc(nbytes)
        try:
            buf: ctypes.Array[ctypes.c_wchar] = from_address(address)
            ref = _new_ref(buf, _release)
        except BaseException:
            allocator.free(address)
            raise
        _live[id(ref)] = (ref, address, allocator)
        if zeros is None:
            _memset(address, 0, nbytes)
        else:
            BYTES[address : address + len(zeros)] = zeros
        if contents is not None:
            buf.value = contents  # raises "string too long" as ctypes does
        return buf

    def new(self, ctype: type[CT], /, *init: Any, **fields: Any) -> CT:
        """An instance of ``ctype`` in slab memory, initialised as ``ctype(*init, **fields)``.

        ``ctype`` is any ctypes data type: a Structure or Union, an array, a pointer or a simple
        type. The memory is zeroed, then ``ctype.__init__`` runs on it (a custom ``__new__`` is
        not called). The block is aligned to ``ctypes.alignment(ctype)``.

        Raises:
            TypeError: ``ctype`` is not a ctypes data type, has no size (an abstract base), or
                its instances take no weak references (``__slots__`` without ``__weakref__``),
                each named in the message; or ``init``/``fields`` do not fit it (as
                ``ctype(...)`` would raise).
            MemoryError, AllocatorClosedError: as :meth:`create_string_buffer`.

        Complexity: O(size of the type) for zeroing, plus ``__init__``.
        """
        if not (isinstance(ctype, type) and issubclass(ctype, _DATA_TYPES)):
            raise TypeError(
                f"new() takes a ctypes data type (Structure, Union, array, pointer or simple "
                f"type), not {ctype!r}"
            )
        try:
            nbytes = ctypes.sizeof(ctype)
        except TypeError:
            raise TypeError(f"new() cannot place {ctype!r}: the type has no size") from None
        align = ctypes.alignment(ctype)
        address = self.heap.alloc(nbytes or 1, align if align > _WORD else _WORD)
        try:
            obj = ctype.from_address(address)
            try:
                ref = _new_ref(obj, _release)
            except TypeError:
                raise TypeError(
                    f"new() cannot place {ctype!r}: its instances take no weak references "
                    f"(it defines __slots__ without '__weakref__')"
                ) from None
        except BaseException:
            self.heap.free(address)
            raise
        _live[id(ref)] = (ref, address, self.heap)
        if nbytes <= _CACHED_BYTES:
            BYTES[address : address + nbytes] = bytes(nbytes)
        else:
            _memset(address, 0, nbytes)
        initialise: Callable[..., None] = type(obj).__init__
        initialise(obj, *init, **fields)
        return obj

    def __repr__(self) -> str:
        return f"<SlabBuffers of {self.heap!r}>"


def buffers(heap: SlabAllocator) -> SlabBuffers:
    """The :class:`SlabBuffers` of ``heap``: made on first use, then kept by it.

    Complexity: O(1).
    """
    return heap.client(SlabBuffers)

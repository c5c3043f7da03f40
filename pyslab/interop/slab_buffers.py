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
An object built by ``from_address`` does not own its memory, so each one owns a *keeper*: a
small object with a ``__del__`` that frees the block, held by the object alone. The object
dies before its keeper (it holds the only reference to it), and it cannot die earlier than
everything derived from it, because each of those keeps the object itself alive:

- ``memoryview(buf)``, its casts and slices hold the exporting object;
- ``pointer(buf)``, ``cast(buf, ...)``, ``T.from_buffer(buf)`` store it in their ``_objects``
  (``from_buffer`` through a memoryview of it);
- ``byref(buf)`` holds it in the argument object;
- an element of an array of structures holds the array as its ``_b_base_``.

Only a bare address (``addressof``, ``cast(...).value``) outlives it, as with ctypes' own
buffers. Where the keeper lives:

- a buffer holds it as the attribute ``_pyslab_block`` of its instance ``__dict__`` (the
  cheapest place to hang it: ``from_address`` leaves ``_objects`` empty);
- a ``new()`` Structure, Union, array or pointer is built with ``from_buffer`` over an
  *exporter*, ctypes' own ``c_char`` array over the block, which holds the keeper: the
  object's ``_objects`` (a dict, which ctypes only ever adds to) holds a memoryview of the
  exporter, so nothing shows in the object's ``__dict__`` (it pickles and copies as ctypes'
  own), and types with ``__slots__`` work too;
- a ``new()`` simple type, whose ``_objects`` is one object that its ``__init__`` replaces,
  and an owner given to :meth:`SlabBuffers.adopt` hold it in their ``__dict__``, or, with no
  ``__dict__``, through a weak reference whose callback drops it.

Collections. When the cycle collector finds an object over a block unreachable, it runs the
finalizers of everything unreachable (the keeper's ``__del__`` among them) *before* it tears
the objects down, and another finalizer may still read the object's bytes, or resurrect it.
So a keeper finalized while a collection runs (``gc.callbacks`` tells when one starts and
stops) does not free: it puts itself on a list, which is settled when the collection stops.
A keeper nothing refers to any more (its object was torn down) frees its block then; one still
referred to (its object was resurrected) stays on the list and is looked at again after every
later collection, until it is unreferenced. A block is therefore never freed while an object
that can read it exists. (A weakly adopted owner's block is freed once its weak reference has
been cleared: such an owner resurrected by a finalizer has no block any more.)

Each keeper holds its allocator (through its class, one per :class:`SlabBuffers`), so an
object keeps the allocator that made it alive and is freed to it, whatever is installed by
then. A free that the collector triggers in the middle of another call of the same allocator
takes the core's re-entrant path (deferred).

Closing the allocator while objects live never leaves them dangling: :class:`SlabBuffers` is a
:class:`~pyslab.core.HeapClient`, and its ``pinned_blocks`` names the block of every keeper that
has not freed it yet (a set of addresses per allocator), so ``close()`` keeps the slab (or
large block) holding each one mapped. The object reads and writes its bytes as before; when it
dies, its keeper frees the block as usual, and the allocator unmaps the slab once no other such
block is left in it. Typed slabs and object caches tie their memory to their ctypes objects
with :meth:`SlabBuffers.adopt`, the same mechanism, so the same holds for them.

Invariant: outside the few statements that make an object, an address is in the set of its
:class:`SlabBuffers` exactly while one armed keeper holds it and has not freed it; the keeper
removes it, then frees the block, once (``__del__`` runs once per object, and a deferred keeper
is settled once); so every block ``close()`` retains is handed back exactly once.

Differences from ctypes' own buffers (the memory is borrowed, not owned): ``ctypes.resize``
refuses them, ``_b_needsfree_`` is 0, and ``vars(buf)`` shows the keeper. Copies
(``copy.copy(buf)``, ``bytes(buf)``) are ordinary objects, in ordinary memory, but
``copy.copy`` copies the instance ``__dict__``, keeper included: the block then stays
allocated until the copy dies too (``copy.deepcopy`` and pickling leave ``None`` in its
place). Never delete or replace ``_pyslab_block``: the block would be freed under the buffer.
Closing an allocator on one thread while another creates objects from it is a race of the
program (the object made may be over released memory), as is any use of an allocator
concurrent with its close: :meth:`SlabBuffers.adopt` alone is safe against it.
"""

from __future__ import annotations

import ctypes
import gc
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
_KEEPER_ATTRIBUTE: Final = "_pyslab_block"
"""The instance attribute that holds a buffer's (or an adopted owner's) keeper."""

_audit: Final = sys.audit
_memset: Final = ctypes.memset
_getrefcount: Final = sys.getrefcount

# One shape per array length: (from_address, bytes to allocate, ``sizeof`` zero bytes or None).
_Shape = tuple[Callable[[int], Any], int, bytes | None]
_char_shapes: dict[int, _Shape] = {}
_wchar_shapes: dict[int, _Shape] = {}


# --- keepers and collections ------------------------------------------------------------------


class _Keeper:
    """Frees one block when it dies; its object holds the only reference to it.

    Each :class:`SlabBuffers` has its own subclass (:func:`_keeper_type`), whose ``__del__``
    knows the allocator and the set of live addresses. ``address`` is set right after the
    keeper is made: 0 means *unarmed* (its ``__del__`` frees nothing: ``free(0)`` is a no-op).
    """

    __slots__ = ("address",)

    address: int

    def release(self) -> None:
        """Free the block now, or, while a collection runs, once it has stopped."""
        raise NotImplementedError

    def __reduce__(self) -> tuple[type[None], tuple[()]]:
        # A copy must never free the block a second time: pickled, it is None.
        return type(None), ()

    def __deepcopy__(self, memo: dict[int, object]) -> None:
        return None

    def __repr__(self) -> str:
        return f"<pyslab block keeper of {getattr(self, 'address', 0):#x}>"


_collecting = False
"""True from the start of a collection to its stop (set by :func:`_on_collection`)."""
_deferred: Final[list[_Keeper]] = []
"""Keepers finalized while a collection ran, not yet settled."""
_watched: Final[list[_Keeper]] = []
"""Settled keepers still referred to (their object was resurrected): settled again after every
later collection."""


def _keeper_type(heap: SlabAllocator, live: set[int]) -> type[_Keeper]:
    """The keeper class of one allocator: its ``__del__`` frees to ``heap``.

    Complexity: O(1) (one class object per allocator).
    """
    discard = live.discard

    class Keeper(_Keeper):
        __slots__ = ()

        def release(self) -> None:
            try:
                address = self.address
            except AttributeError:  # never armed: interrupted right after it was made
                return
            if _collecting:
                # A finalizer run by the collector: its object may still be read by another
                # finalizer, or resurrected. Settled when the collection stops.
                _deferred.append(self)
                return
            discard(address)  # first: close() must not pin a block that is going back
            try:
                heap.free(address)  # looked up each time: set_policy may replace it
            except AllocatorClosedError:
                # Removed from the set while close() ran on another thread, before it asked
                # for the pinned blocks: the block went back with every other one.
                pass
            except PyslabError as error:  # no caller to raise to: record it as the core does
                heap.deferred_errors.append(error)
                warnings.warn(
                    f"freeing a slab-backed ctypes object's block failed: {error}",
                    PyslabWarning, stacklevel=1,
                )

        __del__ = release

    return Keeper


def _reference_counts(items: list[_Keeper]) -> list[int]:
    """``sys.getrefcount`` of each item, as seen from here (see :data:`_UNREFERENCED`)."""
    return [_getrefcount(item) for item in items]


_UNREFERENCED: Final[int] = _reference_counts([_Keeper()])[0]
"""What :func:`_reference_counts` reports for an item only its list refers to."""


def _settle() -> None:
    """After a collection: free the blocks of the deferred keepers that nothing refers to any
    more; keep watching the others.

    Complexity: O(deferred + watched keepers).
    """
    count = len(_deferred)
    waiting = _deferred[:count]
    del _deferred[:count]  # keepers deferred meanwhile (another thread) stay for next time
    waiting += _watched
    _watched.clear()
    for keeper, references in zip(waiting, _reference_counts(waiting), strict=True):
        if references > _UNREFERENCED:
            _watched.append(keeper)  # its object was resurrected: it still holds the keeper
        else:
            keeper.release()  # __del__ already ran, and runs once: this is the free


def _on_collection(phase: str, info: dict[str, int]) -> None:
    """``gc.callbacks`` hook: finalizers run during a collection defer their frees to its end."""
    global _collecting
    if phase == "start":
        _collecting = True
        return
    _collecting = False
    if _deferred or _watched:
        _settle()


gc.callbacks.append(_on_collection)


_clients: Final[weakref.WeakSet[SlabBuffers]] = weakref.WeakSet()
"""Every :class:`SlabBuffers` made, for :func:`live_objects`."""


def live_objects() -> int:
    """How many slab-backed ctypes objects hold a block not yet freed, over every allocator:
    buffers, ``new()`` objects and the owners given to :meth:`SlabBuffers.adopt` (typed slabs'
    slot arrays, object caches' blocks). An object collected by the cycle collector counts
    until the collection ends. Complexity: O(allocators that made such objects)."""
    return sum(len(made._live) for made in list(_clients))


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
    __slots__ = ("__weakref__", "_keeper", "_live", "_weakly_held")

    def __init__(self, heap: SlabAllocator) -> None:
        super().__init__(heap)
        self._live: Final[set[int]] = set()
        """The block of every armed keeper that has not freed it yet."""
        self._keeper: Final = _keeper_type(heap, self._live)
        self._weakly_held: Final[dict[int, tuple[weakref.ref[Any], _Keeper]]] = {}
        """id(weak reference) -> (the reference, the keeper it drops), for adopted owners
        without a ``__dict__``."""
        _clients.add(self)

    @property
    def allocator(self) -> SlabAllocator:
        """The allocator every object made here comes from, and goes back to."""
        return self.heap

    def pinned_blocks(self) -> Iterable[int]:
        """The block of every live slab-backed object of this allocator (its ``close()``
        keeps them mapped; each object's keeper frees its block when the object dies).

        Complexity: O(live slab-backed objects of this allocator).
        """
        live = self._live
        while True:
            try:
                # A copy: a keeper run meanwhile (a collection, another thread) removes one.
                return list(live)
            except RuntimeError:  # the set changed size while it was copied: copy again
                continue

    def adopt(self, owner: object, address: int) -> None:
        """Make ``owner`` own the block at ``address``, as a buffer owns its block.

        For a ctypes object built over a block of this allocator (``from_address`` owns no
        memory): the block is freed when ``owner`` is collected, and the allocator's
        ``close()`` keeps it mapped while ``owner`` lives, so that ``owner``, and everything
        that keeps it alive (``from_buffer`` views, ``memoryview``), never reads unmapped
        memory. ``address`` must come from this allocator's ``alloc``; nothing else may free
        it. The keeper goes in ``owner``'s ``__dict__`` (attribute ``_pyslab_block``); an
        owner without one is tied to it by a weak reference.

        Raises:
            AllocatorClosedError: the allocator was closed (the block went back with it, even
                if it was allocated before: do not use it); nothing is recorded.
            TypeError: ``owner`` has no ``__dict__`` and takes no weak references.

        Complexity: O(1): one keeper and one set entry, under the allocator's lock (so that
        a concurrent ``close()`` either sees the entry or has finished).
        """
        keeper = self._keeper()
        keeper.address = 0  # unarmed until recorded: a failure below frees nothing
        heap = self.heap
        with heap.lock:
            if heap.closed:
                raise AllocatorClosedError(
                    f"adopt() of the block at {address:#x} of a closed allocator {heap!r}"
                )
            self._attach(owner, keeper)
            self._live.add(address)
            keeper.address = address  # armed: from now on its death frees the block

    def _attach(self, holder: object, keeper: _Keeper) -> None:
        """Make ``holder`` hold ``keeper``: in its ``__dict__``, else through a weak reference
        whose callback drops the keeper.

        Raises:
            TypeError: ``holder`` has no ``__dict__`` and takes no weak references.
        """
        try:
            setattr(holder, _KEEPER_ATTRIBUTE, keeper)
            held = getattr(holder, _KEEPER_ATTRIBUTE, None) is keeper  # a __setattr__ may lie
        except (AttributeError, TypeError):
            held = False
        if not held:
            ref = weakref.ref(holder, self._owner_died)
            self._weakly_held[id(ref)] = (ref, keeper)

    def _owner_died(self, ref: weakref.ref[Any]) -> None:
        """Weak-reference callback of an adopted owner without ``__dict__``: drop its keeper
        (whose ``__del__`` frees the block, or defers it while a collection runs)."""
        self._weakly_held.pop(id(ref), None)

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

        Complexity: O(1) plus zeroing the buffer; for up to 1024 bytes, one dict lookup, one
        slab allocation, one keeper and one set entry.
        """
        # One frame, no helper calls: this is the path that install() puts behind ctypes.
        contents: bytes | None
        if type(init) is int:  # first: the common case (no object is both int and bytes)
            _audit("ctypes.create_string_buffer", None, init)
            contents, length = None, init
        elif isinstance(init, bytes):
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
        heap = self.heap
        address = heap.alloc(nbytes)
        try:
            buf: ctypes.Array[ctypes.c_char] = from_address(address)
            keeper = self._keeper()
        except BaseException:
            heap.free(address)
            raise
        # From here on the keeper frees the block: if what follows raises, the keeper dies
        # with this frame and frees it.
        keeper.address = address
        buf._pyslab_block = keeper  # type: ignore[attr-defined]
        self._live.add(address)
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
        if type(init) is int:
            _audit("ctypes.create_unicode_buffer", None, init)
            contents, length = None, init
        elif isinstance(init, str):
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
        heap = self.heap
        address = heap.alloc(nbytes)
        try:
            buf: ctypes.Array[ctypes.c_wchar] = from_address(address)
            keeper = self._keeper()
        except BaseException:
            heap.free(address)
            raise
        keeper.address = address  # the keeper frees the block from here on
        buf._pyslab_block = keeper  # type: ignore[attr-defined]
        self._live.add(address)
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
        not called). The block is aligned to ``ctypes.alignment(ctype)``. A Structure, Union,
        array or pointer is built with ``ctype.from_buffer`` over ctypes' own ``c_char`` array
        over the block, which holds the block's keeper, so the instance's ``__dict__`` stays
        its own; a simple type holds its keeper itself, as a buffer does.

        Raises:
            TypeError: ``ctype`` is not a ctypes data type, has no size (an abstract base), or
                is a simple type whose instances have no ``__dict__`` and take no weak
                references (``__slots__`` without ``__weakref__``), each named in the message;
                or ``init``/``fields`` do not fit it (as ``ctype(...)`` would raise).
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
        size = nbytes or 1
        maker: Any = ctype  # typeshed types from_buffer & co. on metaclasses _CData lacks
        heap = self.heap
        address = heap.alloc(size, align if align > _WORD else _WORD)
        try:
            exporter = (ctypes.c_char * size).from_address(address)
            obj: CT = maker.from_buffer(exporter)  # its _objects holds a view of exporter
            if type(obj._objects) is dict:
                holder: object = exporter  # a dict: ctypes only ever adds to it
            else:
                # A simple type (or an empty structure or array) keeps one object, which
                # its __init__ would replace: the instance itself holds the keeper.
                obj = holder = maker.from_address(address)
            keeper = self._keeper()
            keeper.address = 0  # unarmed until attached
            try:
                self._attach(holder, keeper)
            except TypeError:
                raise TypeError(
                    f"new() cannot place {ctype!r}: its instances have no __dict__ and take "
                    f"no weak references (it defines __slots__ without '__weakref__')"
                ) from None
        except BaseException:
            heap.free(address)
            raise
        del exporter, holder  # obj holds what it needs
        keeper.address = address  # armed: the keeper frees the block from here on
        del keeper
        self._live.add(address)
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

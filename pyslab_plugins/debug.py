"""``debug``: hardening in the manner of Linux SLUB debugging and CPython's ``PYTHONMALLOC=debug``.

A front end (:meth:`pyslab.Policy.frontend`) that lays every block out with red zones, poisons
freed slots, checks free-list pointers before the core follows them, and can record where each
live block was allocated. Every check is an option of the constructor, so that each one's cost
can be measured apart (``python -m benchmarks``, measurement 7).

Block layout (``redzones=True``; ``A`` is the alignment asked, at least the pointer size)::

    slot start (inner)                   user address           user + size             slot end
    |<-- leading red zone: R rounded up to A -->|<-- the caller's -->|<-- trailing red zone -->|
    |    0xFD ... 0xFD                          |    size bytes      |  0xFD ... (>= R bytes)  |

The front end asks the layer below for ``lead + size + R`` bytes aligned to ``A`` and returns
``inner + lead``. The trailing red zone runs to the end of the slot, so the slack that rounding
up to a class leaves is checked too (as SLUB does). The requested size, the slot start and the
allocation site are kept in Python (a dict keyed by user address), not in the red zone: the
dict is what tells a debug block from an address the front end never handed out (a block
allocated before the policy was bound is at a slot start too), an underflow cannot corrupt it,
and the offsets of an overflow are computed from a size that cannot have been overwritten.
Memory (``tracemalloc``, 20,000 blocks of 24 bytes): about 130 bytes of Python objects per
live block (a dict entry, a 2-tuple, an int), and about 100 per freed slot not yet handed out
again (a dict entry naming the block freed there, for double frees and error messages). With
``record_sites`` about 330 per live block and 500 per freed slot (the recorded frames).

Poison (``poison=True``): every free slot of every slab carries the poison byte ``0xDD``
(CPython's ``PYMEM_DEADBYTE``) after its first word, which holds the core's free-list pointer.
A new slab is poisoned whole when it is added (``slab_added``); slabs already there when the
policy is bound have their free slots poisoned then. A freed block's slot is poisoned before it
goes back. When a slot is handed out again, the bytes after its first word must all be poison,
else the write after free is reported with the slot's address, the first corrupted offset and
the block that was freed there. Trade-off: poisoning a new slab touches every page of it at
once (the core otherwise carves slots lazily, touching a page only when a slot in it is first
used), so the resident size is the mapped size, and each new slab costs one ``memset`` of
``slab_size`` bytes. In exchange the check is exact: no byte of a free slot is exempt but the
free-list word, which the next check covers.

Free-list pointers (``check_free_list=True``): before the layer below allocates, the front
end reads, under the allocator's lock, the next pointer stored in the head of the free list of
the class's current slab (of every slab of the class with a free list when there is no
current slab: the core will then pick one) and verifies that it is 0 with no other linked
free slot left, or a free carved slot start of the same slab other than the head itself. A
pointer whose low byte was changed, an arbitrary value or a misaligned one is reported
before the core loads it, with the slot's address and offset 0. :meth:`Debug.check` (run by
``validate()``) walks every free list the same way, reading each node only after checking it.

Red zones (``redzones=True``, ``redzone_size`` bytes, default 16) are filled with ``0xFD``
(``PYMEM_FORBIDDENBYTE``) on allocation and checked on free and by ``validate()``: an overflow
is reported with the offset of its first byte past the end, an underflow with the offset of
the corrupted byte nearest the block (negative).

Sites (``record_sites=True``, ``site_depth`` frames): the allocation site of every live block,
and the allocation and free sites of the block last freed in each slot, appear in every error
about that block, in :meth:`Debug.report_section` and in :meth:`Debug.sites`.

What happens after a detection (nothing is repaired silently; the allocator stays consistent,
``validate()`` passes, and no other live block is touched):

- write after free: the slot is *quarantined*: it stays allocated in the core, held by the
  policy, and is never handed out again; the allocation raises ``CorruptionError``.
- red-zone overwrite found by ``free``: the block is quarantined the same way (its memory and
  its neighbours' may be suspect, so it is not reused); ``free`` raises ``CorruptionError``,
  and the address is no longer a live block (freeing it again is a ``DoubleFreeError``).
- corrupted free-list pointer: reported before it is followed; then, as Linux SLUB does
  ("FIX ...: isolate"), the slot that held it is quarantined and the slab's free list is
  relinked in memory from its live bitmap (every carved slot that is not live), since the rest
  of the list cannot be trusted; the allocation raises ``CorruptionError`` saying so.
- found by ``validate()`` (``check``): raised, nothing changed.

Quarantined slab slots count as ``cached_slots`` in ``stats()`` (blocks the policy holds);
:meth:`Debug.quarantined` lists them. They go back only with ``close()``.

Re-entrant calls (a signal handler or a finalizer that allocates while a call of this front end
is in progress on the same thread): every operation that reads or updates the policy's books
(``alloc``, ``free``, ``check``) marks the front end busy for its locked region, as the core
marks itself. A call that finds it busy leaves the books alone, since they may be half updated:
an ``alloc`` is served by the layer below as it is (no red zones, no poison check: a block the
policy does not know, exactly like one allocated before it was bound, which ``free`` and the
queries pass through), and a ``free`` is deferred until the interrupted call ends, which then
carries it out with every check; a deferred free that fails is kept in
:attr:`Debug.deferred_errors` and warned (``PyslabWarning``), its caller being gone. A
``check`` (``validate()``) from inside another call is refused. The front end reads the core's
slabs (free-list heads) between its own calls, where a handler may have changed them: each
verdict rests on fields read together, with no call in between, from a slab that is still
indexed, so a list a handler emptied, or a slab it released, is never reported nor read.
Layouts (one table per alignment asked) are built in a few steps, one per class, and published
in one store: a handler that needs the same table meanwhile builds its own, which is the same.

Out of memory (any Python allocation failing, the interpreter's own included): every call
succeeds or raises ``MemoryError`` with the allocator consistent, by three techniques.

- *Compute, then commit* (``alloc``): every new value and record (the user address, the
  record, the sites, the memory views of the zones to paint, made before the first write) is
  made, and every dict entry inserted, before anything is written; the commit is dict
  deletions and stores through those views (``view[:] = data``), which allocate nothing.
- *Undo on error* (``alloc``, ``free``): when the commit of an allocation fails, the slot goes
  back to the layer below untouched; when that fails too (it needs memory as well), a large
  block is released in the core's large-block books, which need no memory to forget it once
  the release has begun, and a slot is *parked*: stored into a list slot reserved before the
  block was taken (a store allocates nothing), counted in ``cached_slots`` like the
  quarantine, and given back by the next ``flush`` (``shrink``, ``close``, ``set_policy``).
  (A large block is parked only when the books refuse it too, an earlier block still
  awaiting its release there: the heap then counts it as a live large block until the
  flush.) ``free`` copies the slot's bytes, enters the freed
  block in its books (dict insertions, which fail before they insert), poisons the slot and
  lets the layer below free it; if that raises, having changed nothing, the bytes are written
  back and the entries deleted: the block is live, intact and freeable, as before the call. It
  leaves the books only once freed. A red-zone report makes its message and quarantine entry
  before the block leaves the books.
- *Never raise after the work is done*: ``slab_removed`` (the core goes on releasing the slab)
  forgets what it can of the blocks freed in the slab, and the next ``slab_added`` sweeps what
  it could not; deferred frees that cannot be carried out for want of memory wait for the end
  of the next call; the red zones and poison are written through memory views rather than
  ``ctypes`` (whose calls need memory for their arguments).

A ``MemoryError`` of ``alloc`` names the request as the caller made it (``alloc(24,
align=8)``), not the size with red zones asked of the layer below (the cause chained to it
does). No lock is held by a ``with`` block or a ``finally``: a cleanup late in a function makes
CPython (3.11 to 3.13) retry forever when memory is gone and it must push the instruction's
offset as an int (see "Out of memory" in :mod:`pyslab.core.guard`); the locked regions keep
their handlers short and release the lock in straight-line code, as the core does, and calls
that cannot get a frame (CPython's ``SystemError`` "error return without exception set") are
reported as ``MemoryError``.

Composition: put ``debug`` last among the front ends (``thread-cache+debug``), so that every
block passes through it. Under another front end (``debug+thread-cache``) blocks reach the
caller without passing through ``debug`` (the cache takes and returns slots in batches), so
their slots would hold the caller's bytes when ``debug`` next meets them: the policy then warns
(``PyslabWarning``) and turns poisoning off. Replace or remove a bound ``debug`` policy
(``set_policy``) only when none of its blocks is live: their addresses are not slot starts, and
no other layer knows them. Adding ``debug`` to a live allocator is fine: blocks allocated before
are passed through to the layer below.

Limits (what no byte pattern or O(1) check can see): a write of the fill byte itself; a
free-list pointer overwritten with the start of another free slot of the same slab (it passes
the check; the slots it skips are then neither free nor live, which ``validate()`` reports);
allocations a cache below ``debug`` makes in batches (``thread-cache``'s refills pop several
slots under one lock, without a check per pointer: ``validate()`` still walks every list);
reads of freed or uninitialised memory.

Anchors: Linux SLUB ``slub_debug=FZPU`` (sanity checks, red zones, poisoning, user tracking;
``slabinfo -v``), CPython ``PYTHONMALLOC=debug`` (``0xDD`` dead bytes, ``0xFD`` forbidden
bytes, the traceback of the allocation with ``tracemalloc``).
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Final, TypeAlias

from pyslab import (
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    Policy,
    PyslabError,
    PyslabWarning,
)
from pyslab.core import (
    BYTES,
    WORD_SHIFT,
    WORD_SIZE,
    WORDS,
    FreeListCorruptionError,
    LargeObjects,
    MemorySlab,
    SizeClass,
    SlabIndex,
    as_int,
)
from pyslab.policy import BlockOperations, Heap

__all__ = ["POISON_BYTE", "REDZONE_BYTE", "Debug", "QuarantinedBlock"]

POISON_BYTE: Final = 0xDD
"""Fills free slots (CPython's ``PYMEM_DEADBYTE``)."""
REDZONE_BYTE: Final = 0xFD
"""Fills red zones (CPython's ``PYMEM_FORBIDDENBYTE``)."""

_DEAD: Final = bytes([POISON_BYTE])
_FORBIDDEN: Final = bytes([REDZONE_BYTE])
_REMEMBERED_LARGE: Final = 4096
"""Freed large debug blocks remembered to call a second free a double free (as the core)."""
_ALL: Final = slice(None)
"""``view[_ALL] = data`` writes memory through a view made beforehand, allocating nothing."""
_NO_EXCEPTION_SET: Final = "without exception set"
"""What CPython's ``SystemError`` says when a call could not get a frame (out of memory)."""
_FRAME_FAILURE: Final = "out of memory: a call could not get a frame"
"""The message of the ``MemoryError`` raised in its place."""

Site: TypeAlias = "tuple[tuple[CodeType, int], ...]"
"""A recorded stack: (code object, line) per frame, innermost first."""
_Live: TypeAlias = "tuple[int, int]"
"""A live debug block: (slot start, requested size)."""
_Freed: TypeAlias = "tuple[int, int | None, Site | None, Site | None]"
"""A freed debug block: (address, size, allocation site, free site); None where not kept."""
_Layout: TypeAlias = "tuple[int, int, list[SizeClass | None]]"
"""Per alignment asked: (alignment asked below, leading red zone, class of each total size)."""


@dataclass(frozen=True)
class QuarantinedBlock:
    """A slot (or large block) taken out of service after corruption was found in it."""

    address: int
    """Start of the slot (or large block) the layer below handed out; it stays allocated."""
    span: int
    """Bytes of it: the slot size, or the bytes asked of the layer below for a large block."""
    user: int | None
    """The debug block's address when a live block was quarantined (red zones), else None."""
    in_slab: bool
    """True for a slab slot (counted in ``stats()`` as ``cached_slots``)."""
    reason: str
    """The error message that reported it."""


def _summary(site: Site) -> traceback.StackSummary:
    """A recorded site as the standard library's stack summary, outermost frame first."""
    return traceback.StackSummary.from_list(
        [(code.co_filename, line, code.co_name, None) for code, line in reversed(site)]
    )


def _format_site(site: Site | None, what: str) -> str:
    if site is None:
        return ""
    frames = _summary(site)
    return f"\n{what} at (most recent call last):\n" + "".join(frames.format()).rstrip("\n")


def _capture(depth: int, skip: int = 2) -> Site:
    """The stack from ``skip`` frames up (2: the caller's caller), innermost first, ``depth``
    frames at most.

    Code objects and line numbers only: file and function names are read when formatted.
    """
    frame: FrameType | None = sys._getframe(skip)
    frames: list[tuple[CodeType, int]] = []
    for _ in range(depth):
        if frame is None:
            break
        frames.append((frame.f_code, frame.f_lineno or 0))
        frame = frame.f_back
    return tuple(frames)


def _index(name: str, value: object) -> int:
    """``value`` as an int, by the core's one rule (:func:`pyslab.core.as_int`)."""
    return as_int(value, name)


def _check_bool(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{name} must be a bool, not {value!r}")
    return value


def _check_positive(name: str, value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _size_note(size: int | None) -> str:
    return "" if size is None else f" ({size} bytes)"


def _bytes(count: int) -> str:
    return f"{count} byte" if count == 1 else f"{count} bytes"


def _differences(data: bytes, start: int, stop: int, expected: int) -> list[int]:
    """Offsets in ``data[start:stop]`` whose byte is not ``expected`` (error paths only)."""
    return [i for i in range(start, stop) if data[i] != expected]


class Debug(Policy):
    """Hardening front end: red zones, poisoned free slots, free-list pointer checks, sites.

    See the module documentation for the layout, what each check finds and what happens then.

    Args:
        poison: fill free slots with ``0xDD`` and check them when handed out again (default on).
        redzones: surround each block with ``0xFD`` red zones checked on free (default on).
        redzone_size: bytes of each red zone at least (default 16; the leading one is rounded
            up to the alignment asked, the trailing one runs to the end of the slot).
        check_free_list: check the free-list pointer the core is about to follow on every
            allocation (default on).
        record_sites: record the allocation site of every live block, and the sites of the
            block last freed in each slot (default off: it costs a stack walk per call).
        site_depth: frames recorded per site (default 8).

    Raises:
        TypeError, ValueError: an option has the wrong type or value (the message names it).

    Cost (``python -m benchmarks``): every operation goes through Python code under the
    allocator's lock; see the README's table for each option's share.
    """

    name = "debug"
    description = (
        "hardening: red zones, poisoned free slots, free-list pointer checks, allocation sites"
    )

    def __init__(
        self,
        poison: bool = True,
        redzones: bool = True,
        redzone_size: int = 16,
        check_free_list: bool = True,
        record_sites: bool = False,
        site_depth: int = 8,
    ) -> None:
        self.poison = _check_bool("poison", poison)
        self.redzones = _check_bool("redzones", redzones)
        self.redzone_size = _check_positive("redzone_size", redzone_size)
        self.check_free_list = _check_bool("check_free_list", check_free_list)
        self.record_sites = _check_bool("record_sites", record_sites)
        self.site_depth = _check_positive("site_depth", site_depth)
        self._poisoning = poison
        self._front: _DebugOperations | None = None
        self.deferred_errors: list[PyslabError] = []
        """Errors of frees deferred from re-entrant calls, which had no caller left to raise
        to (each is also warned as ``PyslabWarning``)."""

    # --- binding -------------------------------------------------------------------------------

    def bind(self, heap: Heap) -> None:
        """Start with no block; existing slabs are announced (and poisoned) by slab_added."""
        super().bind(heap)
        self._poisoning = self.poison
        self._index = SlabIndex(heap.slab_size)
        # The front end probes the index's dict itself on every call (no call layer); it is
        # updated in place, so these references stay current. BYTES and WORDS (the core's view
        # of the address space) are indexed only at addresses of a slab found here, or of a
        # block this policy handed out.
        self._by_base = self._index.by_base
        self._mask = self._index.mask
        self._live: dict[int, _Live] = {}
        """Every live debug block: user address -> (slot start, requested size)."""
        self._sites: dict[int, Site] = {}
        """Allocation site per live block (record_sites only)."""
        self._freed: dict[int, int] = {}
        """Slot start -> leading red zone of the debug block last freed there (so its address),
        until the slot is handed out again: a small int, cached by CPython, per freed slot."""
        self._freed_sites: dict[int, _Freed] = {}
        """Slot start -> that block's size and sites (record_sites only)."""
        self._freed_large: OrderedDict[int, _Freed] = OrderedDict()
        self._quarantine: dict[int, QuarantinedBlock] = {}
        """Slot start (or large block) -> its quarantine record."""
        self._quarantined_users: dict[int, QuarantinedBlock] = {}
        self._parked: list[int] = [0]
        """Slot starts (or large blocks) an allocation took from the layer below and could
        give neither to its caller nor back (out of memory): held, counted as cached, given
        back by ``flush``. Zeros are empty entries; the list ends with one whenever an
        allocation is under way, so that parking is a store (see "Out of memory")."""
        self._freed_leftovers = False
        """True when a released slab's entries in ``_freed`` could not all be forgotten (out
        of memory): the next ``slab_added`` sweeps them."""
        self._leads: set[int] = set()
        """Every leading red-zone size used so far (one per alignment asked)."""
        largest = max(c.slot_size for c in heap.size_classes)
        self._poison_pattern = memoryview(_DEAD * max(largest, heap.slab_size))
        """Poison for any slot or slab, written through memory views (not ``ctypes``, whose
        calls need memory for their arguments and say so with ``ctypes.ArgumentError``)."""
        self._redzone_pattern = memoryview(_FORBIDDEN * largest)

    def unbind(self) -> None:
        """Forget every block (see the module documentation on replacing the policy)."""
        self._front = None
        self._index.clear()
        self._live = {}
        self._sites = {}
        self._freed = {}
        self._freed_sites = {}
        self._freed_large = OrderedDict()

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Poison the slab's free slots (all of a new slab), then index it: out of memory, the
        slab is not indexed (the core then does not list it). Complexity: O(slab)."""
        if self._freed_leftovers:
            self._sweep_freed()
        if self._poisoning:
            self._poison_free_slots(slab)
        self._index.add(slab)

    def _poison_free_slots(self, slab: MemorySlab) -> None:
        slot, poison = slab.slot_size, self._poison_pattern
        if slab.bump == slab.first and not slab.free:
            BYTES[slab.first : slab.end] = poison[: slab.end - slab.first]
            return
        # A slab of a live allocator: its free slots hold whatever was there. Walk its list as
        # far as it is sound (check() and the allocations report a corrupted one).
        for node in self._sound_free_list(slab):
            BYTES[node + WORD_SIZE : node + slot] = poison[: slot - WORD_SIZE]
        if slab.bump < slab.end:
            BYTES[slab.bump : slab.end] = poison[: slab.end - slab.bump]

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Forget the slab (a deletion, first) and the blocks freed in it. Raises nothing for
        want of memory, since the core goes on releasing the slab: the entries of its slots
        that could not be forgotten are swept at the next ``slab_added``, before any new slab
        can hold those addresses. Complexity: O(slots of the slab)."""
        self._index.remove(slab)
        freed, sites = self._freed, self._freed_sites
        if freed:
            leftovers = self._freed_leftovers
            self._freed_leftovers = True  # until every entry of the slab is gone
            try:
                for address in slab.slot_addresses():
                    freed.pop(address, None)
                    sites.pop(address, None)
            except MemoryError:
                return
            self._freed_leftovers = leftovers

    def _sweep_freed(self) -> None:
        """Forget the entries of ``_freed`` whose slot lies in no indexed slab (left by a
        ``slab_removed`` that ran out of memory). Complexity: O(freed slots)."""
        freed, sites, owner = self._freed, self._freed_sites, self._index.owner
        for address in list(freed):
            if owner(address) is None:
                freed.pop(address, None)
                sites.pop(address, None)
        self._freed_leftovers = False

    def frontend(self, inner: BlockOperations) -> BlockOperations:
        """Wrap the layer below with the checks (see the module documentation)."""
        # Best effort: the composition is readable here (it is bound before its front ends).
        frontends: Sequence[object] = getattr(getattr(self.heap, "policy", None), "frontends", ())
        if self._poisoning and frontends and frontends[-1] != self.frontend:
            self._poisoning = False
            warnings.warn(
                "the debug policy is wrapped by another front end, so blocks reach callers "
                "without passing through it; poisoning is off. Compose debug last, as in "
                "'thread-cache+debug'.",
                PyslabWarning,
                stacklevel=2,
            )
        self._front = _DebugOperations(self, inner)
        return self._front

    # --- what the heap asks ----------------------------------------------------------------------

    def cached_blocks(self) -> Mapping[int, int]:
        """Quarantined and parked slab slots per slot size: held by the policy (a large block
        parked, which is rare, is counted by the heap as a live large block)."""
        counts: dict[int, int] = {}
        for block in list(self._quarantine.values()):  # a copy: a handler may add one
            if block.in_slab:
                counts[block.span] = counts.get(block.span, 0) + 1
        for address in list(self._parked):
            slab = self._index.owner(address) if address else None
            if slab is not None:
                counts[slab.slot_size] = counts.get(slab.slot_size, 0) + 1
        return counts

    def flush(self) -> None:
        """Give back to the layer below every parked block (``close``, ``shrink``,
        ``set_policy``). Lock held.

        Raises:
            PyslabError: from inside another call of this front end.
            MemoryError: out of memory; the blocks not given back stay parked.

        Complexity: O(parked blocks).
        """
        front, parked = self._front, self._parked
        if front is None or not any(parked):
            return
        if front._busy:
            raise PyslabError("a flush cannot run inside another call of the debug policy")
        for index, address in enumerate(list(parked)):
            if address:
                front._free_below(address)
                parked[index] = 0  # a store: allocates nothing
        with suppress(MemoryError):  # else the zeros stay: empty entries
            del parked[1:]

    def exclusive_blocks(self) -> int:
        """Live debug blocks: their addresses lie past a red zone, not at a slot start, so
        only this policy can free them (``set_policy`` keeps it bound while there are any).

        Complexity: O(1).
        """
        return len(getattr(self, "_live", ()))

    def check(self) -> None:
        """Verify every free list, every free slot's poison, every live block's red zones.

        Like ``slabinfo -v``. Nothing is changed, whatever is found (frees that a signal
        handler or a finalizer makes meanwhile are deferred, and carried out after).

        Raises:
            CorruptionError: naming the slab, the address, the offset and what is wrong.
            PyslabError: called from inside another call of this front end (its books may be
                half updated there).

        Complexity: O(bytes of every slab + bytes of every live block).
        """
        lock = self.heap.lock
        lock.acquire()
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        try:
            self._check_marked_busy()
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        lock.release()
        if failure is not None:
            raise failure

    def _check_marked_busy(self) -> None:
        """:meth:`check` with the front end marked busy. Lock held."""
        front = self._front
        if front is None:
            self._check_all()
            return
        if front._busy:
            raise PyslabError("validate() cannot run inside another call of the debug policy")
        front._busy = True
        try:
            self._check_all()
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        front._busy = False
        if front._backlog:
            failure = front._settle_after(failure)
        if failure is not None:
            raise failure

    def _check_all(self) -> None:
        # Copies of what is walked, as ``list(d)``, ``list(d.values())`` or ``dict(d)``: those
        # copy with no point where a finalizer can run (``tuple(d)``, ``list(d.items())``
        # allocate tracked objects while they iterate), and a re-entrant call served by the
        # layer below may add a slab meanwhile.
        self._index.check(self.heap.size_classes, "the debug policy's slab index")
        for size_class in self.heap.size_classes:
            for each in list(size_class.slabs):
                self._check_slab(each)
        for user, (inner, size) in dict(self._live).items():
            slab = self._index.owner(inner)
            if slab is not None and not slab.is_live(inner):
                raise CorruptionError(
                    f"the debug block at {user:#x} has its slot at {inner:#x} free in {slab!r}"
                )
            if self.redzones:
                message = self._redzone_damage(user, inner, size, self._span(inner, user, size))
                if message is not None:
                    raise CorruptionError(message + " (found by validate())")
        for block in list(self._quarantine.values()):
            holder = self._index.owner(block.address)
            if block.in_slab and (holder is None or not holder.is_live(block.address)):
                raise CorruptionError(f"the quarantined slot at {block.address:#x} is not held")
        for address in list(self._parked):
            holder = self._index.owner(address) if address else None
            if holder is not None and not holder.is_live(address):
                raise CorruptionError(f"the parked slot at {address:#x} is not held")

    def _check_slab(self, slab: MemorySlab) -> None:
        """Walk ``slab``'s free list (each node checked before its next pointer is read) and
        check the poison of every free slot. Lock held.

        Raises:
            CorruptionError: a free-list pointer that cannot be followed, or damaged poison.
        """
        slot = slab.slot_size
        try:
            for node in slab.checked_free_list():
                if self._poisoning:
                    damage = self._poison_damage(node, slot)
                    if damage is not None:
                        raise CorruptionError(damage + " (found by validate())")
        except FreeListCorruptionError as error:
            raise CorruptionError(self._free_list_report(error)) from None
        if self._poisoning and slab.bump < slab.end:
            # The uncarved tail: slots never handed out, poisoned when the slab was added.
            tail = BYTES[slab.bump : slab.end].tobytes()
            if tail.count(_DEAD) != len(tail):
                offset = next(i for i, b in enumerate(tail) if b != POISON_BYTE)
                address = slab.bump + offset
                raise CorruptionError(
                    f"write to a slot never handed out: byte {address:#x} of {slab!r} is "
                    f"{tail[offset]:#04x}, not the poison byte {POISON_BYTE:#04x}"
                )

    # --- what callers can read -------------------------------------------------------------------

    def live_blocks(self) -> dict[int, int]:
        """Every live debug block: address -> requested size (a copy). Complexity: O(blocks)."""
        with self.heap.lock:
            return {user: size for user, (_, size) in dict(self._live).items()}

    def sites(self) -> dict[int, traceback.StackSummary]:
        """The allocation site of every live block (``record_sites=True``; else empty).

        Complexity: O(blocks * site_depth); source lines are read when formatted.
        """
        with self.heap.lock:
            recorded = dict(self._sites)
        return {user: _summary(site) for user, site in recorded.items()}

    def quarantined(self) -> tuple[QuarantinedBlock, ...]:
        """Every slot taken out of service, oldest first. Complexity: O(quarantined)."""
        with self.heap.lock:
            return tuple(list(self._quarantine.values()))

    def report_section(self) -> str:
        """The policy's part of a heap report: options, live blocks with their sites (when
        recorded), quarantined slots. Complexity: O(blocks * site_depth)."""
        with self.heap.lock:
            live = dict(self._live)
            sites = dict(self._sites)
            quarantine = tuple(list(self._quarantine.values()))
        options = (
            f"poison {'on' if self._poisoning else 'off'}, red zones "
            f"{f'{self.redzone_size} bytes' if self.redzones else 'off'}, free-list checks "
            f"{'on' if self.check_free_list else 'off'}, sites "
            f"{f'recorded ({self.site_depth} frames)' if self.record_sites else 'off'}"
        )
        lines = [
            f"debug: {len(live)} live blocks ({sum(s for _, s in live.values())} bytes "
            f"requested), {len(quarantine)} quarantined; {options}"
        ]
        if sites:
            for user, (_, size) in sorted(live.items()):
                lines.append(
                    f"  block {user:#x}: {size} bytes"
                    + _format_site(sites.get(user), "allocated").replace("\n", "\n    ")
                )
        for block in quarantine:
            lines.append(f"  quarantined {block.address:#x} ({block.span} bytes): {block.reason}")
        return "\n".join(lines) + "\n"

    # --- helpers shared with the front end --------------------------------------------------------

    def _span(self, inner: int, user: int, size: int) -> int:
        """Bytes the block occupies from its slot start: its slot, or what a large one asked."""
        slab = self._index.owner(inner)
        if slab is not None:
            return slab.slot_size
        return user - inner + size + (self.redzone_size if self.redzones else 0)

    @staticmethod
    def _sound_free_list(slab: MemorySlab) -> list[int]:
        """The free-list nodes of ``slab`` up to the first unsound pointer (not followed).

        Complexity: O(length of the list).
        """
        nodes: list[int] = []
        # The rest of a corrupted list cannot be trusted; check() and the allocations report it.
        with suppress(FreeListCorruptionError):
            for node in slab.checked_free_list():
                nodes.append(node)
        return nodes

    def _free_list_report(
        self, error: FreeListCorruptionError, corrupted: int | None = None
    ) -> str:
        """The report of a free-list pointer that cannot be followed: the slot holding it (at
        offset 0), its value, why, and what is known of the block freed in that slot.

        ``corrupted`` is the address to give as an offset into that block (none when None).
        A bad head is the slab's own field, not memory a block could write: the core's message
        says it all.
        """
        holder = error.holder
        if holder is None:
            return str(error)
        slab = error.slab
        return (
            f"corrupted free-list pointer in the free {slab.slot_size}-byte slot at {holder:#x} "
            f"(offset 0) of {slab!r}: it holds {error.node:#x}, {error.reason}"
            + self._freed_note(holder, corrupted)
        )

    def _poison_damage(self, slot_start: int, slot: int) -> str | None:
        """The write-after-free report for a free slot whose poison is damaged, or None."""
        data = BYTES[slot_start + WORD_SIZE : slot_start + slot].tobytes()
        if data.count(_DEAD) == len(data):
            return None
        bad = _differences(data, 0, len(data), POISON_BYTE)
        first = bad[0] + WORD_SIZE
        return (
            f"write after free in the free {slot}-byte slot at {slot_start:#x}: byte "
            f"{slot_start + first:#x} (offset {first} of the slot) is {data[bad[0]]:#04x}, not "
            f"the poison byte {POISON_BYTE:#04x} ({_bytes(len(bad))} damaged, the last at offset "
            f"{bad[-1] + WORD_SIZE})" + self._freed_note(slot_start, slot_start + first)
        )

    def _freed_block(self, slot_start: int) -> _Freed | None:
        """(address, size or None, allocation site, free site) of the debug block last freed in
        the slot at ``slot_start``, or None when the slot holds none since it was reused."""
        lead = self._freed.get(slot_start)
        if lead is None:
            return None
        recorded = self._freed_sites.get(slot_start)
        if recorded is not None:
            return recorded
        return slot_start + lead, None, None, None

    def _forget_freed(self, slot_start: int) -> None:
        self._freed.pop(slot_start, None)
        self._freed_sites.pop(slot_start, None)

    def _freed_note(self, slot_start: int, corrupted: int | None = None) -> str:
        """What is known of the block last freed in a slot, for an error message."""
        freed = self._freed_block(slot_start)
        if freed is None:
            return ""
        user, size, allocated, released = freed
        where = f", offset {corrupted - user} of it" if corrupted is not None else ""
        return (
            f"; the block freed there was at {user:#x}{_size_note(size)}{where}"
            + _format_site(allocated, "allocated")
            + _format_site(released, "freed")
        )

    def _redzone_damage(self, user: int, inner: int, size: int, span: int) -> str | None:
        """The report of a damaged red zone of a live block, or None when both are intact."""
        data = BYTES[inner : inner + span].tobytes()
        lead = user - inner
        end = lead + size
        if data.count(_FORBIDDEN, 0, lead) == lead and data.count(_FORBIDDEN, end) == span - end:
            return None
        parts: list[str] = []
        after = _differences(data, end, span, REDZONE_BYTE)
        if after:
            parts.append(
                f"buffer overflow past the end of the block at {user:#x} ({size} bytes): byte "
                f"at offset {after[0] - lead} ({inner + after[0]:#x}) is {data[after[0]]:#04x}, "
                f"not the red-zone byte {REDZONE_BYTE:#04x} ({_bytes(len(after))} of the trailing "
                f"red zone damaged, up to offset {after[-1] - lead})"
            )
        before = _differences(data, 0, lead, REDZONE_BYTE)
        if before:
            parts.append(
                f"buffer underflow before the start of the block at {user:#x} ({size} bytes): "
                f"byte at offset {before[-1] - lead} ({inner + before[-1]:#x}) is "
                f"{data[before[-1]]:#04x}, not the red-zone byte {REDZONE_BYTE:#04x} "
                f"({_bytes(len(before))} of the leading red zone damaged, down to offset "
                f"{before[0] - lead})"
            )
        return "; ".join(parts) + _format_site(self._sites.get(user), "allocated")

    def _owner_of_slot(self, slot_start: int) -> tuple[int, int] | None:
        """The live debug block (user address, size) whose slot starts at ``slot_start``."""
        for lead in list(self._leads):  # a copy: a handler may add one meanwhile
            record = self._live.get(slot_start + lead)
            if record is not None and record[0] == slot_start:
                return slot_start + lead, record[1]
        return None

    def _unknown(self, ptr: int, operation: str) -> InvalidFreeError | None:
        """The error for an address that is not a live debug block, when it concerns a debug
        block (freed, quarantined, or an address inside one); None leaves it to the layer
        below (a block allocated before the policy was bound, or a foreign address).

        Complexity: O(1), plus O(alignments used) for an address inside a live slot.
        """
        # The core's wording for a block already freed: "double free of <address>".
        freed_again = f"double free of {ptr:#x}" if operation == "free" else (
            f"{operation}({ptr:#x}) of a freed block"
        )
        quarantined = self._quarantined_users.get(ptr)
        if quarantined is not None:
            return DoubleFreeError(
                f"{freed_again}: the debug block there was quarantined when freed: "
                f"{quarantined.reason}", ptr,
            )
        slab = self._index.owner(ptr)
        if slab is None:
            large = self._freed_large.get(ptr)
            if large is not None:
                return DoubleFreeError(
                    f"{freed_again}: the debug block there{_size_note(large[1])} was already "
                    f"freed" + _format_site(large[2], "allocated")
                    + _format_site(large[3], "freed"), ptr,
                )
            return None
        if not slab.first <= ptr < slab.end:
            return None
        slot_start = ptr - (ptr - slab.first) % slab.slot_size
        held = self._quarantine.get(slot_start)
        if held is not None:
            return InvalidFreeError(
                f"{operation}({ptr:#x}): the address lies in a quarantined slot at "
                f"{slot_start:#x}: {held.reason}", ptr,
            )
        freed = self._freed_block(slot_start)
        if freed is not None:
            user, size, allocated, released = freed
            sites = _format_site(allocated, "allocated") + _format_site(released, "freed")
            if ptr == user:
                return DoubleFreeError(
                    f"{freed_again}: the debug block there{_size_note(size)} was already freed"
                    + sites, ptr,
                )
            return InvalidFreeError(
                f"{operation}({ptr:#x}): the address is at offset {ptr - user} of the debug "
                f"block freed at {user:#x}" + sites, ptr,
            )
        if slab.is_live(slot_start):
            owner = self._owner_of_slot(slot_start)
            if owner is not None:
                user, size = owner
                return InvalidFreeError(
                    f"{operation}({ptr:#x}): the address is at offset {ptr - user} of the debug "
                    f"block at {user:#x} ({size} bytes), not at its start"
                    + _format_site(self._sites.get(user), "allocated"), ptr,
                )
        return None

    def _quarantine_block(self, block: QuarantinedBlock) -> None:
        """Enter ``block`` in the quarantine; out of memory, nothing has changed."""
        self._quarantine[block.address] = block
        if block.user is not None:
            try:
                self._quarantined_users[block.user] = block
            except BaseException:
                del self._quarantine[block.address]
                raise

    def _isolate(self, slab: MemorySlab, node: int, message: str) -> str:
        """Quarantine the free slot ``node`` (the head of ``slab``'s free list, whose next
        pointer is corrupted) and relink the slab's other free slots from its live bitmap.

        Returns what was done, for the error message. Lock held.
        """
        slot = slab.slot_size
        others = [
            address for address in range(slab.first, slab.bump, slot)
            if address != node and not slab.live >> ((address - slab.base) >> WORD_SHIFT) & 1
        ]
        chain = [node, *others]
        for address, following in zip(chain, [*others, 0], strict=True):
            WORDS[address >> WORD_SHIFT] = following
        size_class = slab.size_class
        size_class.current = slab  # the core pops the head of the current slab: node
        taken = self.heap.take_blocks(size_class, 1)
        if taken != [node]:
            self.heap.return_blocks(taken)
            return (
                "; the slab's free list was relinked from its live bitmap, but the slot could "
                "not be quarantined (re-entrant call)"
            )
        self._forget_freed(node)
        self._quarantine_block(QuarantinedBlock(node, slot, None, True, message))
        return (
            "; the slot is quarantined and the slab's other free slots relinked from its live "
            f"bitmap ({len(others)} slots)"
        )


class _DebugOperations:
    """The block operations of a debug front end (see :class:`Debug`)."""

    __slots__ = (
        "_alloc_below", "_backlog", "_busy", "_by_base", "_check_list", "_free_below",
        "_large", "_layouts", "_live", "_lock", "_mask", "_owns_below", "_parked", "_poison",
        "_policy", "_record", "_sites", "_tail", "_usable_below",
    )

    def __init__(self, policy: Debug, inner: BlockOperations) -> None:
        self._policy = policy
        self._alloc_below = inner.alloc
        self._free_below = inner.free
        self._usable_below = inner.usable_size
        self._owns_below = inner.owns
        # The core's large-block books, where they can be reached: a large block this front
        # end cannot give back through the layer below for want of memory is released there
        # (see _give_back_below).
        self._large: LargeObjects | None = getattr(policy.heap, "_large", None)
        self._lock = policy.heap.lock
        self._by_base = policy._by_base
        self._mask = policy._mask
        self._live = policy._live
        self._sites = policy._sites
        self._parked = policy._parked
        self._tail = policy.redzone_size if policy.redzones else 0
        # The switches, read once: the policy is bound, and its frontend() decided poisoning.
        self._poison = policy._poisoning
        self._check_list = policy.check_free_list
        self._record = policy.record_sites
        # align -> (alignment asked below, leading red zone, class of each total size)
        self._layouts: dict[int, _Layout] = {}
        # True while a call of the thread holding the lock is inside the locked region of
        # ``alloc``, ``free`` or ``check``: a call that finds it set is re-entrant (a signal
        # handler or a finalizer interrupted that call, whose updates may be half done).
        self._busy = False
        self._backlog: deque[int] = deque()
        """Frees made by re-entrant calls, carried out when the interrupted call ends."""

    # --- allocation ------------------------------------------------------------------------------

    def alloc(self, size: int, align: int = WORD_SIZE) -> int:
        """Allocate ``size`` bytes between red zones, from a slot whose poison is intact.

        Raises:
            TypeError, ValueError, MemoryError: as ``SlabAllocator.alloc``; a MemoryError names
                the request as the caller made it (``size``, not the size with red zones),
                and the caller holds no new block.
            CorruptionError: the slot the layer below handed out was written after it was
                freed, or the free-list pointer it was about to follow is corrupted; the slot
                is quarantined (see :class:`Debug`).

        Complexity: O(slot size); O(slabs of the class) when the class has no current slab
        (every free-list head is checked).
        """
        layout = self._layouts.get(align) if type(size) is int and type(align) is int else None
        if layout is None or size <= 0:
            size, layout = self._layout(size, align)
        total = layout[1] + size + self._tail
        lock = self._lock
        lock.acquire()
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        if self._busy:
            try:
                address = self._alloc_reentrant(size, layout[0])
            except BaseException as error:
                failure: BaseException | None = error
            else:
                failure = None
        else:
            self._busy = True  # no call between this and the try: its handler always runs
            try:
                address = self._alloc_locked(size, align, total, layout)
            except BaseException as error:
                failure = error
            else:
                failure = None
            self._busy = False
            if self._backlog:
                failure = self._settle_after(failure)
        lock.release()
        if failure is not None:
            if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
                raise MemoryError(_FRAME_FAILURE) from failure
            raise failure
        return address

    def _alloc_locked(self, size: int, align: int, total: int, layout: _Layout) -> int:
        """The body of :meth:`alloc`. Lock held, busy set.

        Everything that can fail after the layer below has served the block comes before the
        first change (:meth:`_commit_alloc`); if any of it fails, the block goes back to the
        layer below, untouched (:meth:`_give_back_below`: a large block always can), and if
        even that fails (it needs memory too) it is *parked*: held by the policy in a slot
        reserved before the block was taken (a store into an existing list slot allocates
        nothing), counted as cached, given back at ``flush``.
        """
        below, lead, table = layout
        parked = self._parked
        if parked[-1]:
            parked.append(0)  # the reserved slot: the list ends with a 0
        if self._check_list and total < len(table):
            size_class = table[total]
            if size_class is not None:
                self._check_heads(size_class)
        failure: BaseException
        # The handlers only store: see "Out of memory" in the module documentation.
        try:
            inner = self._alloc_below(total, below)
        except BaseException as error:
            failure = error
        else:
            try:
                return self._commit_alloc(inner, size, lead)
            except BaseException as error:
                failure = error
            if inner not in self._policy._quarantine:  # else reported and held: a write after free
                try:
                    self._give_back_below(inner)
                except BaseException as error:
                    lost: BaseException | None = error
                else:
                    lost = None
                if lost is not None and (
                    isinstance(lost, MemoryError)
                    or (type(lost) is SystemError and _NO_EXCEPTION_SET in str(lost))
                ):
                    parked[-1] = inner  # a store into the reserved slot: allocates nothing
        if isinstance(failure, MemoryError) or (
            type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure)
        ):
            # The request as the caller made it: the red zones are this policy's business.
            raise MemoryError(f"alloc({size}, align={align}): out of memory") from failure
        raise failure

    def _give_back_below(self, inner: int) -> None:
        """Give back the block ``inner`` the layer below has just served, untouched. Lock held.

        Through the layer below's ``free``; when that has no memory (the core's free needs
        some to find an address's slab), a block the core's large-block books still hold is
        released there directly: the release the core's free would have made, which needs no
        memory once begun (the block is forgotten at once, and given back now or by the
        next call of the books: ``TrackedBlocks.release``). The books hold it only if the
        core served it outside any call of its own, as a large block, whatever layer passed
        it on; a block libc served a re-entrant call is not in them.

        Raises:
            MemoryError: the block is still allocated (the caller parks it).
        """
        try:
            self._free_below(inner)
        except BaseException as error:  # see "Out of memory" in the module documentation
            failure: BaseException = error
        else:
            return
        large = self._large
        if (
            large is None
            or not large.holds(inner)
            or not (
                isinstance(failure, MemoryError)
                or (type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure))
            )
        ):
            raise failure
        try:
            large.release(inner)
        except BaseException as error:
            refused: BaseException | None = error
        else:
            refused = None
        if refused is not None and large.holds(inner):
            raise refused  # an earlier block still awaits release: nothing has changed

    def _commit_alloc(self, inner: int, size: int, lead: int) -> int:
        """Check the slot the layer below handed out and make it a debug block. Lock held.

        Every new value (the user address, the record, the views of the zones to paint) is
        made and every dict entry inserted before the first write to memory; from then on
        nothing allocates (stores into memory views, dict deletions).

        Raises:
            CorruptionError: the slot was written after it was freed; it is quarantined.
            Anything else (out of memory): nothing has changed.
        """
        policy = self._policy
        tail = self._tail
        slab = self._by_base.get(inner & self._mask)
        user = inner + lead
        record = (inner, size)
        site = _capture(policy.site_depth, 4) if self._record else None
        # The memory to paint and what to paint it with, made before the first change.
        zone = after = None
        paint: memoryview | bytes = b""
        after_paint = b""
        if slab is not None:
            span = slab.slot_size
            if self._poison:
                data = BYTES[inner + WORD_SIZE : inner + span].tobytes()
                if data.count(_DEAD) != len(data):
                    self._write_after_free(inner, span)
            if tail:
                zone, paint = BYTES[inner : inner + span], policy._redzone_pattern[:span]
        elif tail:
            # A large block (or one libc served a re-entrant call): only the zones.
            zone, paint = BYTES[inner:user], _FORBIDDEN * lead
            after, after_paint = BYTES[user + size : user + size + tail], _FORBIDDEN * tail
        sites = self._sites
        if site is not None:
            sites[user] = site
        try:
            self._live[user] = record
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None:
            if site is not None:
                sites.pop(user, None)
            raise failure
        # --- commit: nothing below allocates ---
        freed = policy._freed
        if freed:
            freed.pop(inner, None)
            policy._freed_sites.pop(inner, None)
        if slab is None:
            policy._freed_large.pop(user, None)
        if zone is not None:
            zone[_ALL] = paint
        if after is not None:
            after[_ALL] = after_paint
        return user

    def _alloc_reentrant(self, size: int, align: int) -> int:
        """``alloc`` from inside another call of this front end on this thread (a signal
        handler, a finalizer), whose updates of the books may be half done: the layer below
        serves the block as it is, without red zones or a poison check. The front end then
        knows it as it knows a block allocated before it was bound: ``free`` checks nothing,
        poisons its slot and passes it down. Lock held, busy set by the interrupted call.

        Complexity: as the layer below, plus two dict operations.
        """
        address = self._alloc_below(size, align)
        # What is remembered of a debug block freed at that address goes (one dict operation
        # each, atomic, allocating nothing, and no call once the block is taken): a free of
        # the new block must not be taken for a second free of it.
        policy = self._policy
        if policy._freed:
            policy._freed.pop(address, None)
            policy._freed_sites.pop(address, None)
        policy._freed_large.pop(address, None)
        return address

    def _settle_after(self, failure: BaseException | None) -> BaseException | None:
        """Settle the backlog at the end of a call whose own outcome is ``failure`` (None: it
        succeeded); the error the call is to raise. Lock held, busy clear."""
        try:
            self._settle()
        except BaseException as error:  # only a signal handler's: settling raises nothing else
            return failure if failure is not None else error
        return failure

    def _settle(self) -> None:
        """Carry out the frees that re-entrant calls deferred, with every check. Lock held,
        busy clear (set again here, so that a handler running meanwhile defers in turn).

        An error has no caller left to raise to: it goes to ``Debug.deferred_errors`` and is
        warned (``PyslabWarning``). Out of memory, the free it was carrying out left its block
        live: the address goes back to the head of the backlog, settled at the end of the
        next call of this front end. Raises nothing but a signal handler's exception.
        """
        backlog = self._backlog
        recorded = self._policy.deferred_errors
        first = len(recorded)
        self._busy = True
        failure: BaseException | None = None
        while backlog:
            ptr = backlog.popleft()  # allocates nothing
            try:
                self._free_locked(ptr)
            except BaseException as error:
                failure = error
            else:
                continue
            if isinstance(failure, PyslabError):
                try:
                    recorded.append(failure)
                except MemoryError:
                    pass
                else:
                    failure = None
                    continue
            backlog.appendleft(ptr)  # just popped: allocates nothing
            break
        self._busy = False
        if failure is not None and not isinstance(failure, (MemoryError, PyslabError)):
            raise failure
        self._warn(recorded, first)

    @staticmethod
    def _warn(recorded: list[PyslabError], first: int) -> None:
        """Warn the deferred errors recorded from ``first`` on; out of memory, they stay
        recorded, unwarned."""
        try:
            for failure in recorded[first:]:
                warnings.warn(
                    f"deferred free through the debug policy failed: {failure}", PyslabWarning,
                    stacklevel=5,
                )
        except MemoryError:
            pass

    def _layout(self, size: object, align: object) -> tuple[int, _Layout]:
        """Check ``size`` and ``align`` as the core does; build the layout of ``align`` once."""
        checked_size, checked_align = _index("size", size), _index("align", align)
        if checked_size <= 0:
            raise ValueError(f"size must be a positive int, not {checked_size}")
        if checked_align <= 0 or checked_align & (checked_align - 1):
            raise ValueError(f"align must be a power of two, not {checked_align}")
        layout = self._layouts.get(checked_align)
        if layout is None:
            layout = self._build_layout(checked_align)
        return checked_size, layout

    def _build_layout(self, align: int) -> _Layout:
        """The layout of ``align``: the alignment asked below, the leading red zone, and the
        class of each total size as ``Heap.class_for(total, below)`` gives it (the smallest
        class whose slots hold it and are aligned to ``below``).

        Built by slices, one per class, not by one call per size: a signal handler that
        allocates with the same alignment would otherwise, every time, find the table
        unfinished and start its own, to be interrupted in turn. The layout is published in
        one store, once complete; a handler that builds its own meanwhile builds the same.

        Complexity: O(classes) steps, O(largest slot) memory.
        """
        below = max(align, WORD_SIZE)
        lead = -(-self._tail // below) * below
        classes = self._policy.heap.size_classes
        table: list[SizeClass | None] = [None] * (classes[-1].slot_size + 1)
        served = 0  # totals 1..served have their class
        for size_class in classes:
            if size_class.alignment >= below:
                slot = size_class.slot_size
                table[served + 1 : slot + 1] = [size_class] * (slot - served)
                served = slot
        layout = (below, lead, table)
        self._policy._leads.add(lead)  # before any block with this lead exists
        self._layouts[align] = layout
        return layout

    def _check_heads(self, size_class: SizeClass) -> None:
        """Check the free-list pointer the core will follow next in ``size_class``. Lock held.

        With a current slab, the core pops its head; without, the policy's ``select_slab``
        picks a slab, so the head of every slab of the class with a free list is checked.
        """
        current = size_class.current
        if current is not None:
            if current.free:
                self._check_head(current)
            return
        for slab in list(size_class.slabs):  # a copy (see _check_all): a handler may add one
            if slab.free:
                self._check_head(slab)

    def _check_head(self, slab: MemorySlab) -> None:
        """Check the head of ``slab``'s free list and the next pointer stored in it. Lock held.

        The common case, both sound, is tested inline; :meth:`_report_next` (or the core's own
        message, for a bad head) says what is wrong otherwise. The head is checked first, so
        that its word is read only inside the slab (a pop the front end did not see, by a cache
        below it, could have set it).

        The caller looked at the slab before this call, and a signal handler or a finalizer
        may have run since (at the call): it may have emptied the list, or released the slab.
        So from the index test to the verdict nothing is called, and every field is read
        afresh: the verdict is that of one real state of a slab still mapped.
        """
        by_base, base = self._by_base, slab.base
        if base not in by_base or by_base[base] is not slab:
            return  # released meanwhile: nothing of it will be followed
        node, first, slot, bump, live = slab.free, slab.first, slab.slot_size, slab.bump, slab.live
        if not node:
            return  # emptied meanwhile: the core will carve a new slot, following nothing
        if first <= node < bump and not (node - first) % slot and not (
            live >> ((node - base) >> WORD_SHIFT) & 1
        ):
            following = WORDS[node >> WORD_SHIFT]
            if following:
                if (
                    first <= following < bump
                    and not (following - first) % slot
                    and following != node
                    and not live >> ((following - base) >> WORD_SHIFT) & 1
                ):
                    return
            elif (bump - first) // slot - slab.used == 1:
                return
            self._report_next(slab, node, following)
        raise FreeListCorruptionError(
            slab, None, node, slab.free_list_fault(node) or "not a free slot of the slab"
        )

    def _report_next(self, slab: MemorySlab, node: int, following: int) -> None:
        """Raise the report of the corrupted next pointer ``following`` read from the free
        head ``node``, after isolating the slot that holds it. Lock held."""
        policy = self._policy
        problem = slab.free_list_fault(following, (node,)) or "not a free slot of the slab"
        message = policy._free_list_report(
            FreeListCorruptionError(slab, node, following, problem), node
        )
        raise CorruptionError(message + policy._isolate(slab, node, message))

    def _write_after_free(self, inner: int, span: int) -> None:
        """Quarantine the slot just handed out and raise the report. Lock held.

        The report and the record are made first, then the quarantine entry is inserted; out
        of memory before that, nothing has changed."""
        policy = self._policy
        message = policy._poison_damage(inner, span)
        assert message is not None
        report = message + "; the slot is quarantined (never handed out again)"
        policy._quarantine_block(QuarantinedBlock(inner, span, None, True, message))
        if policy._freed:
            policy._freed.pop(inner, None)
            policy._freed_sites.pop(inner, None)
        raise CorruptionError(report)

    # --- freeing ---------------------------------------------------------------------------------

    def free(self, ptr: int | None) -> None:
        """Check the block's red zones, poison its slot and give it back.

        Raises:
            CorruptionError: a red zone was overwritten (overflow or underflow); the block is
                quarantined, and the address is no longer a live block.
            DoubleFreeError: ``ptr`` is a debug block already freed (or quarantined).
            InvalidFreeError: ``ptr`` lies inside a debug block, or is no block of this
                allocator (reported by the layer below).
            TypeError: as ``SlabAllocator.free``.
            MemoryError: out of memory; the block is live, its bytes as they were.
            Except for a quarantine, the allocator is unchanged when it raises. Called from
            inside another call of this front end (a signal handler, a finalizer), the free is
            deferred until that call ends, and an error then goes to ``Debug.deferred_errors``.

        Complexity: O(slot size).
        """
        failure: BaseException | None
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        if type(ptr) is not int or ptr <= 0:
            try:
                self._free_below(ptr)
            except BaseException as error:
                failure = error
            else:
                return
        else:
            lock = self._lock
            lock.acquire()
            if self._busy:
                # Re-entrant (see alloc): carried out, with every check, when the interrupted
                # call ends; until then the block stays live.
                try:
                    self._backlog.append(ptr)
                except BaseException as error:
                    failure = error
                else:
                    failure = None
            else:
                self._busy = True  # no call between this and the try: its handler always runs
                try:
                    self._free_locked(ptr)
                except BaseException as error:
                    failure = error
                else:
                    failure = None
                self._busy = False
                if self._backlog:
                    failure = self._settle_after(failure)
            lock.release()
            if failure is None:
                return
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    def _free_locked(self, ptr: int) -> None:
        """The body of :meth:`free`, for a positive int. Lock held, busy set."""
        record = self._live.get(ptr)
        if record is None:
            self._free_unknown(ptr)
            return
        inner, size = record
        slab = self._by_base.get(inner & self._mask)
        span = slab.slot_size if slab is not None else ptr - inner + size + self._tail
        if self._tail:
            message = self._policy._redzone_damage(ptr, inner, size, span)
            if message is not None:
                self._quarantine_live(ptr, inner, span, slab is not None, message)
        self._release(ptr, inner, size, slab, span)

    def _release(
        self, ptr: int, inner: int, size: int, slab: MemorySlab | None, span: int
    ) -> None:
        """Poison the slot of the live debug block ``ptr`` and give it to the layer below.
        Lock held, busy set.

        Undone on error: every new value, the copy of the slot's bytes and the records of the
        freed block come first (the records are dict insertions, which fail before they
        insert); then the poison is written (into views made beforehand: no allocation) and
        the layer below frees the slot. If that raises, having changed nothing (out of memory,
        or a refusal), the slot's bytes are written back and the records deleted (neither
        allocates): the block is live and usable, as it was. The block leaves the books only
        once it is freed (deletions, allocating nothing).
        """
        policy = self._policy
        record = self._record
        allocated = self._sites.get(ptr) if record else None
        released = _capture(policy.site_depth, 4) if record else None
        target = poison = None
        saved = b""
        if slab is not None:
            freed = policy._freed
            if self._poison:
                target = BYTES[inner : inner + span]
                saved = target.tobytes()
                poison = policy._poison_pattern[:span]
            # Before the free: a free that empties the slab may release it (slab_removed).
            freed[inner] = ptr - inner
            if record:
                try:
                    policy._freed_sites[inner] = (ptr, size, allocated, released)
                except BaseException:
                    del freed[inner]
                    raise
            if target is not None and poison is not None:
                target[_ALL] = poison
        else:
            remembered = policy._freed_large
            entry = (ptr, size, allocated, released)
            if len(remembered) >= _REMEMBERED_LARGE:
                remembered.popitem(last=False)  # the oldest: only error messages name it
            remembered[ptr] = entry
        # The handler only stores the error: see "Out of memory" in the module documentation.
        try:
            self._free_below(inner)
        except BaseException as error:
            failure: BaseException | None = error
        else:
            failure = None
        if failure is not None and (
            isinstance(failure, (MemoryError, PyslabError))
            or (type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure))
        ):  # the layer below changed nothing: undo
            if slab is None:
                policy._freed_large.pop(ptr, None)
            else:
                if target is not None:
                    target[_ALL] = saved
                policy._freed.pop(inner, None)
                policy._freed_sites.pop(inner, None)
            raise failure
        self._live.pop(ptr, None)
        if record:
            self._sites.pop(ptr, None)
        if failure is not None:
            raise failure  # a signal handler's: the free is taken as done

    def _quarantine_live(
        self, user: int, inner: int, span: int, in_slab: bool, message: str
    ) -> None:
        """Take the live block ``user``, whose red zones are damaged, out of service and raise
        the report. The report and the quarantine entries come first (out of memory there,
        nothing has changed); the block then leaves the books (deletions)."""
        report = message + "; the block is quarantined (never handed out again)"
        self._policy._quarantine_block(QuarantinedBlock(inner, span, user, in_slab, message))
        self._live.pop(user, None)
        self._sites.pop(user, None)
        raise CorruptionError(report)

    def _free_unknown(self, ptr: int) -> None:
        """``free`` of an address that is not a live debug block. Lock held.

        A block allocated before the policy was bound has its slot poisoned as any freed
        one, before the free (which may release the slab), and its bytes written back if the
        free raises, having changed nothing."""
        error = self._policy._unknown(ptr, "free")
        if error is not None:
            raise error
        slab = self._by_base.get(ptr & self._mask)
        if not (self._poison and slab is not None and slab.is_live(ptr)):
            self._free_below(ptr)
            return
        span = slab.slot_size
        target = BYTES[ptr : ptr + span]
        saved = target.tobytes()
        target[_ALL] = self._policy._poison_pattern[:span]
        try:
            self._free_below(ptr)
        except BaseException as caught:
            failure: BaseException = caught
        else:
            return
        if isinstance(failure, (MemoryError, PyslabError)) or (
            type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure)
        ):
            target[_ALL] = saved
        raise failure

    # --- queries ---------------------------------------------------------------------------------

    def usable_size(self, ptr: int) -> int:
        """The size the caller asked for (blocks allocated before the policy was bound: as the
        layer below).

        Raises:
            DoubleFreeError, InvalidFreeError: ``ptr`` is not a live block.

        Complexity: O(1).
        """
        failure: BaseException
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        try:
            if type(ptr) is int and ptr > 0:
                lock = self._lock
                lock.acquire()
                try:
                    record = self._live.get(ptr)
                    error = None if record is not None else self._policy._unknown(
                        ptr, "usable_size"
                    )
                except BaseException as caught:
                    failure = caught
                else:
                    lock.release()
                    if record is not None:
                        return record[1]
                    if error is not None:
                        raise error
                    return self._usable_below(ptr)
                lock.release()
                raise failure
            return self._usable_below(ptr)
        except BaseException as caught:
            failure = caught
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

    def owns(self, ptr: int) -> bool:
        """True when ``ptr`` is a live debug block, or a block of the layer below that is not
        part of a debug block. Complexity: O(1)."""
        failure: BaseException
        # Not ``with``, nor try/finally: see "Out of memory" in the module documentation.
        try:
            if type(ptr) is not int or ptr <= 0:
                return self._owns_below(ptr)
            lock = self._lock
            lock.acquire()
            try:
                owned: bool | None = True if ptr in self._live else (
                    None if self._policy._unknown(ptr, "owns") is None else False
                )
            except BaseException as caught:
                failure = caught
            else:
                lock.release()
                return self._owns_below(ptr) if owned is None else owned
            lock.release()
            raise failure
        except BaseException as caught:
            failure = caught
        if type(failure) is SystemError and _NO_EXCEPTION_SET in str(failure):
            raise MemoryError(_FRAME_FAILURE) from failure
        raise failure

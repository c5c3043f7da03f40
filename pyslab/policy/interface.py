"""The policy interface: where the allocator asks a plugin to decide, and what plugins may observe.

A policy is a subclass of :class:`Policy` that overrides some of its hooks. There are two kinds:

*Decisions* (one answer each; the last policy of a composition that overrides a decision
provides it, every composition starting from ``first-fit``):

- :meth:`Policy.select_slab`: which slab of a class serves allocations once the current one is
  full; ``None`` asks the core for a new slab.
- :meth:`Policy.find_owner`: which slab owns a freed address; ``None`` when no slab does.
- :meth:`Policy.keep_empty`: whether a slab that just became empty stays cached or goes back to
  the page source at once.
- :meth:`Policy.slab_color`: the offset of slot 0 in a new slab (slab coloring).

One decision is optional: :meth:`Policy.page_source` lets a policy supply the page source of an
allocator built without one (``address-mask`` needs its slabs in one reserved region). It is asked
once, when the allocator is built; the last policy that overrides it provides it, and when none
does the allocator maps each slab with ``mmap``.

*Front ends* (:meth:`Policy.frontend`, chained in composition order) wrap the four block
operations (``alloc``, ``free``, ``usable_size``, ``owns``) of the allocator: per-thread caches
and debugging layers that change what a block looks like. Each gets the operations of the layer
below and returns its own; the allocator's public methods become the outermost layer's.

*Notifications* (every policy that overrides one is called, in composition order):
``slab_added``, ``slab_removed``, ``slab_refilled`` (a full slab got a free slot),
``block_allocated`` and ``block_freed`` (every allocation and free of a slab block; the
policies that can undo them, :meth:`Policy.revert_block_allocated` and
:meth:`Policy.revert_block_freed`, are told first, see "Out of memory" in
:mod:`pyslab.core.guard`);
``flush`` (give back every block the policy holds: ``close``, ``shrink``), ``check`` (verify
the policy's own invariants: ``validate``) and ``cached_blocks`` (blocks held per slot size,
for ``stats``). One query is asked only by ``set_policy``: :meth:`Policy.exclusive_blocks`
(blocks the policy's front end handed out that no other layer can take back; while there are
any, the policy cannot be replaced or removed).

What is checked when a composition is bound (by :func:`~pyslab.policy.resolve`, once, when the
allocator is built or its policy set; never per call), each refused with a
:class:`~pyslab.errors.PolicyError` naming the policy: no policy class appears twice; no public
method of a policy has a name close to a hook's without being one (``keep_emtpy``,
``select_slabs``: the message lists the hooks); every overridden hook accepts the positional
arguments the core passes (extra parameters need defaults); the decisions are all provided.
The allocator itself refuses, where it uses them, a ``select_slab`` answer other than None or
a slab listed in its class with a free slot, a bad ``slab_color``, a policy instance bound to
another allocator, and a ``set_policy`` that would unbind or rebind a policy whose
:meth:`~Policy.exclusive_blocks` is not 0.

Hooks are resolved once, when the allocator is built or its policy set: a notification that no
policy overrides costs nothing, and the per-block hooks switch the allocator to its observed
variants only when some policy overrides them. Every hook runs under the allocator's lock, in the
state the docstring of the hook describes. A hook must not call the allocator it is bound to.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:  # the core's types, named for the checker: the core imports this layer
    from pyslab.core.pages import PageSource
    from pyslab.core.slab import MemorySlab, SizeClass

__all__ = ["BlockOperations", "Heap", "Policy"]


class BlockOperations(Protocol):
    """The four block operations a front end wraps (see :meth:`Policy.frontend`)."""

    def alloc(self, size: int, align: int = ...) -> int:
        """As :meth:`SlabAllocator.alloc`."""
        ...

    def free(self, ptr: int | None) -> None:
        """As :meth:`SlabAllocator.free`."""
        ...

    def usable_size(self, ptr: int) -> int:
        """As :meth:`SlabAllocator.usable_size`."""
        ...

    def owns(self, ptr: int) -> bool:
        """As :meth:`SlabAllocator.owns`."""
        ...


class Heap(Protocol):
    """What a bound policy may see of its allocator."""

    @property
    def size_classes(self) -> Sequence[SizeClass]:
        """Every size class, smallest slot first."""
        ...

    @property
    def slab_size(self) -> int:
        """Bytes per slab (a power of two, a multiple of the page size)."""
        ...

    @property
    def page_source(self) -> PageSource:
        """The source slabs are mapped from."""
        ...

    @property
    def lock(self) -> threading.RLock:
        """The allocator's lock (re-entrant): hold it to read slabs consistently."""
        ...

    def class_for(self, size: int, align: int = ...) -> SizeClass | None:
        """The class serving a request, or None when the system fallback serves it.

        Raises:
            TypeError, ValueError: as ``alloc`` for a bad size or alignment.
        """
        ...

    def take_blocks(self, size_class: SizeClass, count: int) -> list[int]:
        """Allocate up to ``count`` blocks of ``size_class`` under one lock (magazine refill).

        Returns fewer when memory ran out after some were taken (those are handed over), or
        none when called re-entrantly.

        Raises:
            MemoryError: no block could be taken; nothing has changed.
        """
        ...

    def return_blocks(self, addresses: Sequence[int]) -> None:
        """Free every block of ``addresses`` under one lock (magazine flush).

        Raises:
            InvalidFreeError: an address is not a live block; the ones before it are freed.
        """
        ...


class Policy:
    """Base class of every policy plugin. Override the hooks the policy decides or observes.

    Class attributes ``name`` and ``description`` identify the policy; a plugin registered under
    the entry-point group ``pyslab.policies`` should use its entry-point name as ``name``.
    An instance serves one allocator at a time: :meth:`bind` is called when it is attached.
    """

    name: ClassVar[str] = "policy"
    description: ClassVar[str] = ""

    _spec: str | None = None  # set by make_policy when it passes parameters

    @property
    def spec(self) -> str:
        """The policy as a spec string names it: ``name`` with the parameters it was made with
        (``reclaim(keep=4)``, from :func:`~pyslab.policy.make_policy` or a spec), else ``name``.
        """
        return self._spec or self.name

    def bind(self, heap: Heap) -> None:
        """Attach to an allocator. Called once, before any other hook, under the lock.

        The heap may already hold slabs (``set_policy`` on a live allocator): they are then
        announced through :meth:`slab_added` right after this call.
        """
        self.heap = heap

    def unbind(self) -> None:
        """Detach from the allocator (``set_policy`` replaced this policy, or ``close``)."""

    # --- decisions -------------------------------------------------------------------------

    def select_slab(self, size_class: SizeClass) -> MemorySlab | None:
        """Return a slab of ``size_class`` with a free slot, or None to have a new one created.

        Called when ``size_class.current`` is None. The answer becomes ``current``.
        """
        raise NotImplementedError

    def find_owner(self, address: int) -> MemorySlab | None:
        """Return the slab whose mapping contains ``address``, or None when no slab does.

        The core then checks that ``address`` is a live block's start in that slab.
        """
        raise NotImplementedError

    def keep_empty(self, size_class: SizeClass, slab: MemorySlab) -> bool:
        """Decide the fate of ``slab``, which just became empty: True keeps it cached.

        ``slab`` is already in ``size_class.empty``. Returning False gives it back to the page
        source at once (after :meth:`slab_removed`).
        """
        raise NotImplementedError

    def slab_color(self, size_class: SizeClass, serial: int) -> int:
        """Offset in bytes of slot 0 in the new slab number ``serial`` of ``size_class``.

        Must be a multiple of ``size_class.alignment`` and leave room for at least one slot.
        """
        raise NotImplementedError

    def page_source(self) -> PageSource | None:
        """Optional decision: the page source of an allocator built without ``page_source=``.

        Called once, in ``SlabAllocator.__init__`` before :meth:`bind` (never by
        ``set_policy``: a live allocator keeps its source). None leaves the default ``mmap``
        source. The allocator owns the source returned and closes it in ``close()``.
        """
        return None

    # --- front ends --------------------------------------------------------------------------

    def frontend(self, inner: BlockOperations) -> BlockOperations:
        """Wrap the block operations of the layer below (per-thread caches, debugging).

        Called when the policy is bound (at construction or ``set_policy``); the operations
        returned become the allocator's ``alloc``, ``free``, ``usable_size`` and ``owns``
        (``calloc`` and ``realloc`` go through them; with a front end, ``realloc`` always
        moves the block). A front end must pass to ``inner`` every address it did not hand
        out itself, so that errors are reported by the layer that knows the block.
        """
        raise NotImplementedError

    def flush(self) -> None:
        """Give back to the heap every block the policy holds (``close``, ``shrink``)."""

    def check(self) -> None:
        """Verify the policy's own invariants (``validate``); raise CorruptionError if not."""

    def cached_blocks(self) -> Mapping[int, int]:
        """Blocks the policy holds, which the heap counts as used: slot size -> count."""
        return {}

    def exclusive_blocks(self) -> int:
        """Live blocks handed out through this policy's front end that only it can take back.

        Their addresses mean nothing to the layers below (``debug``'s lie past a red zone), so
        ``set_policy`` refuses to replace or remove the policy while this is above 0: the blocks
        would become unfreeable. Asked under the lock, by ``set_policy`` only; the default is
        0 (a policy whose blocks any layer below can free, or that hands out none).

        Complexity: should be O(1).
        """
        return 0

    # --- notifications ---------------------------------------------------------------------

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """``slab`` joined ``size_class`` (new, or already there when the policy was set)."""

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """``slab`` is about to go back to the page source; it is empty."""

    def slab_refilled(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """``slab`` was full and a free just gave it a free slot."""

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """A block of ``size`` requested bytes was handed out at ``address`` from ``slab``."""

    def block_freed(self, slab: MemorySlab, address: int) -> None:
        """The block at ``address`` went back to ``slab``."""

    def revert_block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Optional: undo exactly this policy's latest ``block_allocated(slab, address, size)``,
        allocating nothing.

        Called with the arguments of that call and the core in the state it had then, before
        the core undoes its own writes: when a later policy's ``block_allocated`` raised, or
        when the second step of a call that took the block (zeroing it, copying into it,
        freeing the block it replaces) failed. Between the two calls the policy may have
        been told of blocks of other size classes only (the moving ``realloc`` frees the old
        block, of another class, before it can fail), each of those complete or reverted.

        It must allocate nothing, so that the undo holds with memory exhausted: it stores
        back objects its ``block_allocated`` saved before its first write (old ints, a dict
        a slab left) and deletes what that call inserted, and must not re-insert a key a dict
        lost (the dict may have to grow). A policy that observes ``block_allocated`` without
        this hook still works: it is told after the core's second step and after every
        policy that has the hook, and when the call fails after it was told (or two such
        policies are composed and the second raises), its update stands while the core
        undoes its own.

        Complexity: should be O(1).
        """
        raise NotImplementedError

    def revert_block_freed(self, slab: MemorySlab, address: int) -> None:
        """Optional: undo exactly this policy's latest ``block_freed(slab, address)``,
        allocating nothing, when a later policy's ``block_freed`` raised (the core then
        undoes its own writes: the block stays live).

        As :meth:`revert_block_allocated`: the core is in the state of that call, and the
        hook only stores back saved objects and deletes what the call inserted. A policy
        that observes ``block_freed`` without it is told after every policy that has it; if
        two such policies are composed and the second raises, the first's update stands.

        Complexity: should be O(1).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<policy {self.name}>"

"""``thread-cache``: per-thread magazines of free blocks, exchanged with the slabs in batches."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping

from pyslab import CorruptionError, DoubleFreeError, Policy
from pyslab.core import WORD_SHIFT, WORD_SIZE, MemorySlab, SizeClass, SlabIndex
from pyslab.policy import BlockOperations, Heap


class _Magazines:
    """One thread's magazines: a stack of cached block addresses per size class.

    Held only by the thread's ``threading.local``: when the thread exits, the object goes and
    its blocks go back to the heap.
    """

    __slots__ = ("__weakref__", "owner", "stacks")

    def __init__(self, owner: ThreadCache, classes: int) -> None:
        self.owner = owner
        self.stacks: list[list[int]] = [[] for _ in range(classes)]

    def __del__(self) -> None:
        self.owner.give_back(self)


class ThreadCache(Policy):
    """Magazines in the manner of Bonwick & Adams (2001): each thread keeps a bounded stack of
    free blocks per class and exchanges them with the shared slabs in batches, under the lock,
    so that the common alloc and free take no lock.

    - ``alloc`` pops the calling thread's stack of the class; an empty stack is refilled with
      ``batch`` blocks taken from the slabs under one lock (``Heap.take_blocks``).
    - ``free`` pushes onto the calling thread's stack, whichever thread allocated the block;
      a stack longer than ``magazine`` gives its ``batch`` oldest blocks back under one lock.
    - A block in a magazine is *used* for the slabs (``stats()`` counts it in
      ``cached_slots``). A thread that exits gives its blocks back; ``close()`` and ``shrink()``
      call :meth:`flush`, which takes every thread's.
    - Double frees stay detected across threads: every cached address is in one shared dict,
      so freeing a block that sits in any magazine raises ``DoubleFreeError``. Owners are
      found with a :class:`~pyslab.core.SlabIndex` of the policy's own (as ``dict-lookup``),
      read without the lock (a dict read is atomic in CPython).
    - Requests with an alignment above the pointer size, and large blocks, go straight to the
      layer below.

    Cost: memory of up to ``magazine`` blocks per class per thread held back from other
    threads; a lock every ``batch`` operations instead of every one. In CPython the global
    interpreter lock already serialises Python code, so the gain is the lock's own cost, not
    parallelism. ``flush()`` and ``check()`` touch other threads' magazines: call them (through
    ``close``, ``shrink``, ``validate``) while no other thread is allocating.

    Args:
        magazine: blocks a thread may cache per class (default 64).
        batch: blocks moved per exchange with the slabs (default ``magazine // 2``).

    Raises:
        TypeError, ValueError: ``magazine`` or ``batch`` is not a positive int, or ``batch``
            exceeds ``magazine``.
    """

    name = "thread-cache"
    description = "per-thread magazines of free blocks (Bonwick & Adams 2001): no lock per op"

    def __init__(self, magazine: int = 64, batch: int | None = None) -> None:
        batch = magazine // 2 if batch is None and type(magazine) is int else batch
        for label, value in (("magazine", magazine), ("batch", batch)):
            if type(value) is not int:
                raise TypeError(f"{label} must be an int, not {value!r}")
            if value < 1:
                raise ValueError(f"{label} must be at least 1, not {value}")
        assert batch is not None
        if batch > magazine:
            raise ValueError(f"batch {batch} exceeds magazine {magazine}")
        self.magazine = magazine
        self.batch = batch

    def bind(self, heap: Heap) -> None:
        """Start with no magazines and an empty slab index."""
        super().bind(heap)
        self._index = SlabIndex(heap.slab_size)
        # The front end's free probes the index's dict itself on every call (no call layer);
        # it is updated in place, so these references stay current.
        self._by_base = self._index.by_base
        self._mask = self._index.mask
        self._local = threading.local()
        self._cached: dict[int, None] = {}
        """Every address in any magazine (insertion order is irrelevant)."""
        self._threads: weakref.WeakSet[_Magazines] = weakref.WeakSet()
        self._bound = True

    def unbind(self) -> None:
        """Forget every magazine (their blocks were flushed by ``close`` or stay live) and
        every slab: a front end still holding the index then finds none, rather than slabs
        whose memory may have gone back to the page source."""
        self._bound = False
        self._threads = weakref.WeakSet()
        self._local = threading.local()
        self._index.clear()

    def slab_added(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Index the slab by base. Complexity: O(1)."""
        self._index.add(slab)

    def slab_removed(self, size_class: SizeClass, slab: MemorySlab) -> None:
        """Drop the slab from the index. Complexity: O(1)."""
        self._index.remove(slab)

    def frontend(self, inner: BlockOperations) -> BlockOperations:
        """Wrap the operations of the layer below with the magazines."""
        return _CachedOperations(self, inner)

    def _magazines(self) -> _Magazines:
        magazines = _Magazines(self, len(self.heap.size_classes))
        self._local.magazines = magazines
        self._threads.add(magazines)
        return magazines

    # --- exchanges with the heap -------------------------------------------------------------

    def give_back(self, magazines: _Magazines) -> None:
        """Return every block of one thread's magazines to the heap (thread exit, flush)."""
        if not self._bound:
            return
        blocks = [address for stack in magazines.stacks for address in stack]
        for stack in magazines.stacks:
            stack.clear()
        self._forget(blocks)
        self.heap.return_blocks(blocks)

    def _forget(self, blocks: list[int]) -> None:
        cached = self._cached
        for address in blocks:
            del cached[address]

    def flush(self) -> None:
        """Give back every thread's cached blocks (``close``, ``shrink``). Complexity: O(held)."""
        for magazines in list(self._threads):
            self.give_back(magazines)

    def cached_blocks(self) -> Mapping[int, int]:
        """Cached blocks per slot size, over every thread."""
        counts: dict[int, int] = {}
        for magazines in list(self._threads):
            for size_class, stack in zip(self.heap.size_classes, magazines.stacks, strict=True):
                if stack:
                    counts[size_class.slot_size] = counts.get(size_class.slot_size, 0) + len(stack)
        return counts

    def check(self) -> None:
        """The slab index agrees with the heap; every cached address is a live block of its
        class, in exactly one magazine.

        Raises:
            CorruptionError: naming the slab or the address.

        Complexity: O(slabs + cached blocks).
        """
        self._index.check(self.heap.size_classes, "the thread-cache slab index")
        seen: set[int] = set()
        for magazines in list(self._threads):
            for size_class, stack in zip(self.heap.size_classes, magazines.stacks, strict=True):
                for address in stack:
                    slab = self._index.owner(address)
                    if slab is None or slab.size_class is not size_class:
                        raise CorruptionError(f"cached {address:#x} is not a {size_class!r} block")
                    if not slab.is_live(address) or address in seen:
                        raise CorruptionError(f"cached {address:#x} is free, or cached twice")
                    seen.add(address)
        if seen != self._cached.keys():
            raise CorruptionError(
                f"{len(self._cached)} addresses marked cached, {len(seen)} in magazines"
            )


class _CachedOperations:
    """The block operations of a thread-cache front end (see :class:`ThreadCache`)."""

    def __init__(self, policy: ThreadCache, inner: BlockOperations) -> None:
        heap = policy.heap
        self._policy = policy
        self._inner = inner
        largest = heap.size_classes[-1].slot_size
        self._by_size: list[SizeClass | None] = [None]
        self._by_size.extend(heap.class_for(size) for size in range(1, largest + 1))
        self._largest = len(self._by_size) - 1

    def alloc(self, size: int, align: int = WORD_SIZE) -> int:
        """Pop the thread's magazine; refill it from the slabs when empty. Complexity: O(1)."""
        small = type(size) is int and 0 < size <= self._largest
        if small and type(align) is int and align == WORD_SIZE:
            size_class = self._by_size[size]
            policy = self._policy
            try:
                magazines: _Magazines = policy._local.magazines
            except AttributeError:
                magazines = policy._magazines()
            assert size_class is not None
            stack = magazines.stacks[size_class.index]
            if stack:
                address = stack.pop()
                del policy._cached[address]
                return address
            refill = policy.heap.take_blocks(size_class, policy.batch)
            if refill:
                address = refill.pop()
                policy._cached.update(dict.fromkeys(refill))
                stack.extend(refill)
                return address
        return self._inner.alloc(size, align)

    def free(self, ptr: int | None) -> None:
        """Push onto the thread's magazine; flush the oldest batch when it overflows.

        Raises:
            DoubleFreeError: ``ptr`` already sits in a magazine (of any thread).
            InvalidFreeError: as the layer below, for every address that is not a live block.

        Complexity: O(1); a flush is O(batch) under the lock.
        """
        if type(ptr) is int and ptr > 0 and not ptr & (WORD_SIZE - 1):
            policy = self._policy
            slab = policy._by_base.get(ptr & policy._mask)  # SlabIndex.owner, inlined
            # a live block start in the slabs' view: the bit of its first word is set
            if slab is not None and slab.live >> ((ptr - slab.base) >> WORD_SHIFT) & 1:
                cached = policy._cached
                if ptr in cached:
                    raise DoubleFreeError(f"double free of {ptr:#x}: it is in a thread cache", ptr)
                cached[ptr] = None
                try:
                    magazines: _Magazines = policy._local.magazines
                except AttributeError:
                    magazines = policy._magazines()
                stack = magazines.stacks[slab.size_class.index]
                stack.append(ptr)
                if len(stack) > policy.magazine:
                    oldest = stack[: policy.batch]
                    del stack[: policy.batch]
                    policy._forget(oldest)
                    policy.heap.return_blocks(oldest)
                return
        self._inner.free(ptr)

    def usable_size(self, ptr: int) -> int:
        """As the layer below, refusing blocks that sit in a magazine (they are free)."""
        if ptr in self._policy._cached:
            raise DoubleFreeError(f"{ptr:#x} was freed: it is in a thread cache", ptr)
        return self._inner.usable_size(ptr)

    def owns(self, ptr: int) -> bool:
        """As the layer below; a block in a magazine is free, so not owned by a caller."""
        return ptr not in self._policy._cached and self._inner.owns(ptr)

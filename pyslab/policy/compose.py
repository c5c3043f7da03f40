"""Composition: the hooks of a sequence of policies resolved, once, to one callable each."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyslab.errors import PolicyError

from .interface import BlockOperations, Policy
from .registry import BASE_POLICY
from .validation import check_composition

if TYPE_CHECKING:
    from pyslab.core.pages import PageSource
    from pyslab.core.slab import MemorySlab, SizeClass

__all__ = ["ResolvedPolicy", "resolve"]


_DECISIONS = ("select_slab", "find_owner", "keep_empty", "slab_color")
_NOTIFICATIONS = ("slab_added", "slab_removed", "slab_refilled", "flush", "check")
_REVERTS = {"block_allocated": "revert_block_allocated", "block_freed": "revert_block_freed"}
"""The per-block notifications, each with the hook that undoes it."""


def _overrides(policy: Policy, hook: str) -> bool:
    return getattr(type(policy), hook) is not getattr(Policy, hook)


def _chain(calls: list[Callable[..., None]]) -> Callable[..., None] | None:
    if not calls:
        return None
    if len(calls) == 1:
        return calls[0]

    def each(*args: object) -> None:
        for call in calls:
            call(*args)

    return each


def _observers(
    policies: Sequence[Policy], hook: str
) -> tuple[list[Callable[..., None]], list[Callable[..., None]]]:
    """The bound ``hook`` of every policy that overrides it, those that can revert it first
    (each group in composition order), and the bound reverts of the first group."""
    revert = _REVERTS[hook]
    undoable = [p for p in policies if _overrides(p, hook) and _overrides(p, revert)]
    others = [p for p in policies if _overrides(p, hook) and not _overrides(p, revert)]
    return [getattr(p, hook) for p in undoable + others], [getattr(p, revert) for p in undoable]


def _tell_allocated(
    calls: list[Callable[..., None]], reverts: list[Callable[..., None]]
) -> Callable[[MemorySlab, int, int], None]:
    """The composed ``block_allocated``: each of ``calls`` in turn; ``reverts[i]`` undoes
    ``calls[i]`` (the policies without one come last in ``calls``).

    The composed hook raises what a hook raised, having reverted those told before it; what
    a revert raised (it could not run), the policies before it keeping their update.
    Complexity: O(observers), plus their hooks.
    """

    def block_allocated(slab: MemorySlab, address: int, size: int) -> None:
        # All or nothing, given all-or-nothing hooks: when one raises, those told before it
        # are reverted, last first (stores and deletions: no memory needed). Short, with no
        # ``finally``: see "Out of memory" in pyslab.core.guard.
        told = 0
        try:
            for call in calls:
                call(slab, address, size)
                told += 1
        except BaseException as error:
            failure = error
        else:
            return
        if told > len(reverts):  # a policy without a revert was told: its update stands
            told = len(reverts)
        while told:
            told -= 1
            reverts[told](slab, address, size)
        raise failure

    return block_allocated


def _tell_freed(
    calls: list[Callable[..., None]], reverts: list[Callable[..., None]]
) -> Callable[[MemorySlab, int], None]:
    """The composed ``block_freed``, as :func:`_tell_allocated`."""

    def block_freed(slab: MemorySlab, address: int) -> None:
        # As _tell_allocated's block_allocated.
        told = 0
        try:
            for call in calls:
                call(slab, address)
                told += 1
        except BaseException as error:
            failure = error
        else:
            return
        if told > len(reverts):
            told = len(reverts)
        while told:
            told -= 1
            reverts[told](slab, address)
        raise failure

    return block_freed


def _untell_allocated(
    reverts: list[Callable[..., None]],
) -> Callable[[MemorySlab, int, int], None]:
    """The composed ``revert_block_allocated``: every one of ``reverts``, last first.

    Raises what a revert raised (it could not run: no frame), the ones before it not run.
    Complexity: O(observers), plus their reverts.
    """
    if len(reverts) == 1:
        return reverts[0]
    count = len(reverts)

    def revert_block_allocated(slab: MemorySlab, address: int, size: int) -> None:
        # Last first, by index: a ``for`` loop would make an iterator, which needs memory.
        told = count
        while told:
            told -= 1
            reverts[told](slab, address, size)

    return revert_block_allocated


def _per_block(policies: Sequence[Policy]) -> dict[str, Callable[..., None] | None]:
    """The composed per-block notifications, and the composed revert of ``block_allocated``
    (None unless every policy that observes it can revert it)."""
    allocated, allocated_reverts = _observers(policies, "block_allocated")
    freed, freed_reverts = _observers(policies, "block_freed")
    return {
        "block_allocated": (
            None if not allocated
            else allocated[0] if len(allocated) == 1
            else _tell_allocated(allocated, allocated_reverts)
        ),
        "block_freed": (
            None if not freed
            else freed[0] if len(freed) == 1
            else _tell_freed(freed, freed_reverts)
        ),
        "revert_block_allocated": (
            _untell_allocated(allocated_reverts)
            if allocated and len(allocated_reverts) == len(allocated) else None
        ),
    }


@dataclass(frozen=True)
class ResolvedPolicy:
    """A composition with every hook resolved to one callable (or None: nobody listens)."""

    policies: tuple[Policy, ...]
    select_slab: Callable[[SizeClass], MemorySlab | None]
    find_owner: Callable[[int], MemorySlab | None]
    keep_empty: Callable[[SizeClass, MemorySlab], bool]
    slab_color: Callable[[SizeClass, int], int]
    slab_added: Callable[[SizeClass, MemorySlab], None] | None
    slab_removed: Callable[[SizeClass, MemorySlab], None] | None
    slab_refilled: Callable[[SizeClass, MemorySlab], None] | None
    block_allocated: Callable[[MemorySlab, int, int], None] | None
    block_freed: Callable[[MemorySlab, int], None] | None
    flush: Callable[[], None] | None = None
    check: Callable[[], None] | None = None
    page_source: Callable[[], PageSource | None] | None = None
    """The optional page-source decision, or None when no policy provides one."""
    frontends: tuple[Callable[[BlockOperations], BlockOperations], ...] = ()
    """Front-end wrappers, innermost first."""
    cached_blocks: tuple[Callable[[], Mapping[int, int]], ...] = ()
    revert_block_allocated: Callable[[MemorySlab, int, int], None] | None = None
    """Undoes ``block_allocated`` without memory (every observer's revert, last first); None
    when no policy observes it, or one that does cannot revert it."""

    @property
    def name(self) -> str:
        """The composition as ``a+b+c``, without the implicit ``first-fit`` base; a policy made
        with parameters shows them (``dict-lookup+reclaim(keep=4)``)."""
        names = [p.spec for p in self.policies[1:]] or [self.policies[0].spec]
        return "+".join(names)

    @property
    def observes_blocks(self) -> bool:
        """True when some policy watches every allocation or free."""
        return self.block_allocated is not None or self.block_freed is not None


def resolve(policies: Sequence[Policy]) -> ResolvedPolicy:
    """Check ``policies`` and resolve their hooks (the first provides every decision) once.

    The checks (:mod:`pyslab.policy.validation`) run here, when the composition is bound, and
    never per call: no policy class appears twice, no public method looks like a misspelt hook,
    and every overridden hook takes the parameters the core passes.

    Notifications are called in composition order, but for the per-block ones: the policies
    that can revert one (``revert_block_allocated``, ``revert_block_freed``) are told it
    first, in composition order, then the others; when one raises, those told before it are
    reverted, last first, and the error raised, so that the composed hook is all or nothing
    when at most one observer lacks the revert (it is told last). The composed revert of
    ``block_allocated``, which the core uses to undo a second step, exists only when every
    observer has one.

    Raises:
        PolicyError: two policies of one class (or one instance twice), a method named like a
            hook that is none, a hook overridden with the wrong parameters, or no policy
            provides a decision; the message names the policy.

    Complexity: O(number of policies * their public methods * hooks), paid once per
    ``SlabAllocator``/``set_policy``.
    """
    check_composition(policies, BASE_POLICY)
    decisions: dict[str, Callable[..., object]] = {}
    for hook in _DECISIONS:
        providers = [p for p in policies if _overrides(p, hook)]
        if not providers:
            raise PolicyError(f"no policy in {list(policies)!r} decides {hook}")
        decisions[hook] = getattr(providers[-1], hook)
    notify = {
        hook: _chain([getattr(p, hook) for p in policies if _overrides(p, hook)])
        for hook in _NOTIFICATIONS
    }
    notify.update(_per_block(policies))
    sources = [p.page_source for p in policies if _overrides(p, "page_source")]
    return ResolvedPolicy(
        tuple(policies), **decisions, **notify,  # type: ignore[arg-type]
        page_source=sources[-1] if sources else None,
        frontends=tuple(p.frontend for p in policies if _overrides(p, "frontend")),
        cached_blocks=tuple(p.cached_blocks for p in policies if _overrides(p, "cached_blocks")),
    )

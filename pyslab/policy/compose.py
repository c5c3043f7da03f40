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
_NOTIFICATIONS = (
    "slab_added", "slab_removed", "slab_refilled", "block_allocated", "block_freed", "flush",
    "check",
)


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
    sources = [p.page_source for p in policies if _overrides(p, "page_source")]
    return ResolvedPolicy(
        tuple(policies), **decisions, **notify,  # type: ignore[arg-type]
        page_source=sources[-1] if sources else None,
        frontends=tuple(p.frontend for p in policies if _overrides(p, "frontend")),
        cached_blocks=tuple(p.cached_blocks for p in policies if _overrides(p, "cached_blocks")),
    )

"""Checks a composition must pass before it is bound (as pluggy checks hook implementations).

Run once per composition, by :func:`~pyslab.policy.compose.resolve` (so when an allocator is
built and at each ``set_policy``); nothing here runs per call. Each check raises
:class:`~pyslab.errors.PolicyError` naming the policy and what is wrong with it:

- *a misspelt hook*: a public method of a :class:`Policy` subclass whose name is close to a hook
  name without being one (``keep_emtpy``, ``select_slabs``, ``slab_add``) would silently never
  be called. "Close" is :func:`difflib.get_close_matches` at :data:`HOOK_NAME_CUTOFF`, on the
  names as written and with case and underscores ignored (``selectSlab``). The cutoff catches a
  slip of one or two characters (a swap, a letter missing or added, a plural, a cut-off
  ``_ed``) in hook names of eight characters or more, and a plural of the short ones
  (``checks``); helper names sharing a word with a hook stay below it (``live_blocks``,
  ``held_blocks``, ``check_all``, ``rebind``, ``flushed``).
- *a hook with the wrong parameters*: an override must accept the positional arguments the
  core passes (as many as the base hook takes); extra parameters need defaults (or ``*args``),
  and it may not require a keyword-only one.
- *one policy twice*: two policies of the same class in one composition (both would keep the
  same state twice, or the second would silently shadow the first's decisions).
"""

from __future__ import annotations

import difflib
import inspect
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

from pyslab.errors import PolicyError

from .interface import Policy

__all__ = ["HOOKS", "HOOK_NAME_CUTOFF", "check_composition", "check_policy"]

HOOKS: Final[tuple[str, ...]] = tuple(
    name for name, value in vars(Policy).items()
    if not name.startswith("_") and inspect.isfunction(value)
)
"""Every hook a policy may override: the public methods of :class:`Policy`."""

HOOK_NAME_CUTOFF: Final = 0.85
"""How similar (:class:`difflib.SequenceMatcher` ratio) a method name must be to a hook name
to be taken for a misspelling of it."""

_POSITIONAL: Final = (
    inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
)
_NORMALIZED: Final = {name.replace("_", "").lower(): name for name in HOOKS}
_PASSED: Final[weakref.WeakSet[type[Policy]]] = weakref.WeakSet()
"""Policy classes whose methods passed: a class is checked once per process, its instances'
own attributes (which may shadow a hook) at every binding."""


def _hook_arity() -> dict[str, tuple[int, str]]:
    """Per hook: the positional parameters the core passes, and the base's signature."""
    arity: dict[str, tuple[int, str]] = {}
    for hook in HOOKS:
        parameters = list(inspect.signature(getattr(Policy, hook)).parameters.values())[1:]
        arity[hook] = (len(parameters), f"{hook}({', '.join(p.name for p in parameters)})")
    return arity


_ARITY: Final = _hook_arity()


def _methods(cls: type[Policy]) -> Iterator[tuple[str, type]]:
    """Every public function (plain, static or class method) defined below :class:`Policy`
    in the MRO of ``cls``, with the class defining it; the nearest definition of each name."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is Policy or klass is object:
            continue
        for name, value in vars(klass).items():
            if name in seen or name.startswith("_"):
                continue
            seen.add(name)
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value):
                yield name, klass


def _near_hook(name: str) -> str | None:
    """The hook ``name`` looks like a misspelling of, or None."""
    close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=HOOK_NAME_CUTOFF)
    if close:
        return close[0]
    close = difflib.get_close_matches(
        name.replace("_", "").lower(), _NORMALIZED, n=1, cutoff=HOOK_NAME_CUTOFF
    )
    return _NORMALIZED[close[0]] if close else None


def _plain(signature: inspect.Signature) -> str:
    """``signature`` without annotations (they are strings here, and only add noise)."""
    return str(signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty)
                    for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    ))


def _accepts(signature: inspect.Signature, count: int) -> bool:
    """True when a call with ``count`` positional arguments binds to ``signature``."""
    parameters = signature.parameters.values()
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    required = sum(1 for p in positional if p.default is inspect.Parameter.empty)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    keyword_required = any(
        p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
        for p in parameters
    )
    return required <= count and (count <= len(positional) or variadic) and not keyword_required


def _check_names(policy: Policy) -> None:
    for name, klass in _methods(type(policy)):
        if name in _ARITY:
            continue
        hook = _near_hook(name)
        if hook is not None:
            raise PolicyError(
                f"policy {policy!r} ({klass.__qualname__}) defines {name}(), which looks like "
                f"the hook {hook}() but is no hook, so the allocator would never call it; "
                f"the hooks are: {', '.join(HOOKS)}. Rename it (a helper that is no hook "
                f"can start with an underscore)."
            )


def _check_signatures(policy: Policy, hooks: Iterable[str]) -> None:
    for hook in hooks:
        count, expected = _ARITY[hook]
        method: Callable[..., object] = getattr(policy, hook)
        if not callable(method):
            raise PolicyError(
                f"policy {policy!r} sets the hook {hook} to {method!r}, which is not "
                f"callable; expected a method {expected}"
            )
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):  # a callable without a readable signature (C code)
            continue
        if not _accepts(signature, count):
            raise PolicyError(
                f"policy {policy!r} overrides the hook {hook} with the wrong parameters: "
                f"expected {expected} (extra parameters need defaults), found "
                f"{hook}{_plain(signature)}"
            )


def check_policy(policy: Policy) -> None:
    """Check one policy's hook names and hook signatures (see the module documentation).

    Raises:
        PolicyError: a public method looks like a misspelt hook, or a hook is overridden with
            parameters the core cannot call it with (the message names the policy, the method
            and, as the case may be, the hooks that exist or both signatures).

    Complexity: O(public methods * hooks) string comparisons and O(hooks) signatures, the
    first time a class is bound; then O(hooks) per binding (attributes of the instance that
    shadow a hook are checked each time).
    """
    cls = type(policy)
    own = getattr(policy, "__dict__", {})
    if cls not in _PASSED:
        _check_names(policy)
        _check_signatures(
            policy, [h for h in HOOKS if getattr(cls, h) is not getattr(Policy, h) or h in own]
        )
        _PASSED.add(cls)
    elif own:
        _check_signatures(policy, [h for h in HOOKS if h in own])


def check_composition(policies: Sequence[Policy], default: str) -> None:
    """Check that no policy class appears twice in ``policies``, then each policy.

    ``default`` is the name of the base policy that composition inserts first when it is not
    given first: a second one is most often a spec that names it later.

    Raises:
        PolicyError: two policies of one class (naming them), or as :func:`check_policy`.

    Complexity: O(number of policies) plus :func:`check_policy` for each.
    """
    seen: dict[type[Policy], int] = {}
    for index, policy in enumerate(policies):
        first = seen.setdefault(type(policy), index)
        if first != index:
            same = "the same instance" if policies[first] is policy else "two instances"
            note = (
                f" ({default} is the base of every composition: it is added first unless the "
                f"composition starts with it, so name it first or not at all)"
                if policy.name == default else ""
            )
            raise PolicyError(
                f"policy {policy!r} ({type(policy).__qualname__}) appears twice in "
                f"{list(policies)!r}, at positions {first} and {index} ({same}): a "
                f"composition holds each policy once{note}"
            )
    for policy in policies:
        check_policy(policy)

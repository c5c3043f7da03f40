"""Finding policy plugins by name through the ``pyslab.policies`` entry-point group.

The core knows no plugin module: the built-in policies are registered in pyslab's own
``pyproject.toml`` exactly as a third-party package registers one::

    [project.entry-points."pyslab.policies"]
    my-policy = "my_package.my_module:MyPolicy"

Entry points are read once per process, on first use; each plugin class is checked when it is
loaded (a :class:`~pyslab.Policy` subclass), with an error naming it when it is not (the
shared :class:`~pyslab.policy.entry_points.EntryPointRegistry`, which workloads use too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeAlias

from pyslab.errors import PolicyError, UnknownPolicyError

from .entry_points import EntryPointRegistry
from .interface import Policy

__all__ = ["DEFAULT_POLICY", "PolicySpec", "make_policy", "parse_policies", "policies"]

GROUP: Final = "pyslab.policies"
DEFAULT_POLICY: Final = "first-fit"
"""The base of every composition: the seed's first-fit walk, which provides every decision."""

PolicySpec: TypeAlias = "Policy | str | Sequence[Policy | str] | None"
"""What ``policy=`` accepts: an instance, a name, ``"a+b"``, a sequence of those, or None."""

_REGISTRY: Final = EntryPointRegistry(
    GROUP, Policy, "policy", "policies", unknown=UnknownPolicyError, invalid=PolicyError
)


def policies() -> dict[str, str]:
    """Every registered policy name with its one-line description, sorted by name.

    Raises:
        PolicyError: a registered entry point does not load a ``Policy`` subclass.
    """
    return _REGISTRY.descriptions()


def make_policy(name: str, /, **params: object) -> Policy:
    """Build a fresh instance of the policy registered as ``name``, with ``params``.

    Raises:
        UnknownPolicyError: no policy has that name (the message lists the known ones).
        PolicyError: the policy takes no parameter of such a name.
        TypeError, ValueError: a parameter's value is refused by the policy itself.
    """
    return _REGISTRY.make(name, params)


def parse_policies(spec: PolicySpec) -> list[Policy]:
    """Turn a ``policy=`` argument into instances, ``first-fit`` first.

    Names are instantiated afresh, so two allocators never share a policy made from a name.

    Raises:
        UnknownPolicyError: a name is not registered.
        TypeError: an item is neither a ``Policy`` nor a name.
    """
    items: list[Policy | str]
    if spec is None:
        items = []
    elif isinstance(spec, (str, Policy)):
        items = [spec]
    else:
        items = list(spec)
    chosen: list[Policy] = []
    for item in items:
        if isinstance(item, Policy):
            chosen.append(item)
        elif isinstance(item, str):
            chosen.extend(make_policy(part.strip()) for part in item.split("+") if part.strip())
        else:
            raise TypeError(f"a policy must be a pyslab.Policy or a name, not {item!r}")
    if not any(type(p).name == DEFAULT_POLICY for p in chosen[:1]):
        chosen.insert(0, make_policy(DEFAULT_POLICY))
    return chosen

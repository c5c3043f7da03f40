"""Finding policy plugins by name through the ``pyslab.policies`` entry-point group.

The core knows no plugin module: the built-in policies are registered in pyslab's own
``pyproject.toml`` exactly as a third-party package registers one::

    [project.entry-points."pyslab.policies"]
    my-policy = "my_package.my_module:MyPolicy"

Entry points are read once per process, on first use; each plugin class is checked when it is
loaded (a :class:`~pyslab.Policy` subclass), with an error naming it when it is not.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Final, TypeAlias

from .errors import PolicyError, UnknownPolicyError
from .policy import Policy

__all__ = ["DEFAULT_POLICY", "PolicySpec", "make_policy", "parse_policies", "policies"]

GROUP: Final = "pyslab.policies"
DEFAULT_POLICY: Final = "first-fit"
"""The base of every composition: the seed's first-fit walk, which provides every decision."""

PolicySpec: TypeAlias = "Policy | str | Sequence[Policy | str] | None"
"""What ``policy=`` accepts: an instance, a name, ``"a+b"``, a sequence of those, or None."""

_lock = threading.Lock()
_entry_points: dict[str, EntryPoint] | None = None
_classes: dict[str, type[Policy]] = {}


def _registered() -> dict[str, EntryPoint]:
    global _entry_points
    with _lock:
        if _entry_points is None:
            _entry_points = {ep.name: ep for ep in entry_points(group=GROUP)}
        return _entry_points


def _policy_class(name: str) -> type[Policy]:
    cls = _classes.get(name)
    if cls is not None:
        return cls
    registered = _registered()
    if name not in registered:
        known = ", ".join(sorted(registered)) or "none (is pyslab-alloc installed?)"
        raise UnknownPolicyError(f"unknown policy {name!r}; known policies: {known}")
    loaded = registered[name].load()
    if not (isinstance(loaded, type) and issubclass(loaded, Policy)):
        raise PolicyError(
            f"entry point {name!r} ({registered[name].value}) is not a pyslab.Policy subclass"
        )
    _classes[name] = loaded
    return loaded


def policies() -> dict[str, str]:
    """Every registered policy name with its one-line description, sorted by name.

    Raises:
        PolicyError: a registered entry point does not load a ``Policy`` subclass.
    """
    return {name: _policy_class(name).description for name in sorted(_registered())}


def make_policy(name: str, /, **params: object) -> Policy:
    """Build a fresh instance of the policy registered as ``name``, with ``params``.

    Raises:
        UnknownPolicyError: no policy has that name (the message lists the known ones).
        PolicyError: the policy takes no parameter of such a name.
        TypeError, ValueError: a parameter's value is refused by the policy itself.
    """
    cls = _policy_class(name)
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as exc:
        raise PolicyError(f"policy {name!r} does not take {params!r}: {exc}") from None
    return cls(**params)


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

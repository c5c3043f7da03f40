"""One registry of plugin classes per entry-point group: found by name, checked once, cached.

The policy registry (``pyslab.policies``) and the workload registry (``pyslab.workloads``)
are both instances of :class:`EntryPointRegistry`: entry points are read once per process, on
first use, and each class is checked when it is loaded, with an error naming it when it is not
of the expected base class.
"""

from __future__ import annotations

import inspect
import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

__all__ = ["EntryPointRegistry"]

P = TypeVar("P")


class EntryPointRegistry(Generic[P]):
    """The classes registered under ``group``, each a subclass of ``base``.

    Args:
        group: the entry-point group, e.g. ``"pyslab.policies"``.
        base: the class every plugin must subclass.
        kind: the word for one plugin in messages ("policy", "workload").
        kinds: its plural ("policies", "workloads").
        unknown: the exception for an unregistered name (its message lists the known ones).
        invalid: the exception for a plugin that is not a ``base`` subclass, or is given
            parameters it does not take.
    """

    def __init__(
        self,
        group: str,
        base: type[P],
        kind: str,
        kinds: str,
        unknown: type[Exception],
        invalid: type[Exception],
    ) -> None:
        self.group = group
        self._base = base
        self._kind = kind
        self._kinds = kinds
        self._unknown = unknown
        self._invalid = invalid
        self._lock = threading.Lock()
        self._entry_points: dict[str, EntryPoint] | None = None
        self._classes: dict[str, type[P]] = {}

    def names(self) -> list[str]:
        """Every registered name, sorted. Complexity: O(plugins); read once per process."""
        with self._lock:
            if self._entry_points is None:
                self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
            return sorted(self._entry_points)

    def load(self, name: str) -> type[P]:
        """The class registered as ``name``.

        Raises:
            ``unknown``: no plugin has that name (the message lists the known ones).
            ``invalid``: the entry point does not load a ``base`` subclass.
        """
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        known = self.names()
        assert self._entry_points is not None
        if name not in self._entry_points:
            listed = ", ".join(known) or "none (is pyslab-alloc installed?)"
            raise self._unknown(f"unknown {self._kind} {name!r}; known {self._kinds}: {listed}")
        entry = self._entry_points[name]
        loaded = entry.load()
        if not (isinstance(loaded, type) and issubclass(loaded, self._base)):
            raise self._invalid(
                f"entry point {name!r} ({entry.value}) is not a "
                f"pyslab.{self._base.__name__} subclass"
            )
        self._classes[name] = loaded
        return loaded

    def descriptions(self) -> dict[str, str]:
        """Every registered name with its one-line description (the class attribute
        ``description``), sorted by name."""
        return {name: str(getattr(self.load(name), "description", "")) for name in self.names()}

    def make(self, name: str, params: dict[str, object]) -> P:
        """A fresh instance of the plugin ``name`` built with ``params``.

        Raises:
            ``unknown``, ``invalid``: as :meth:`load`; ``invalid`` also when the plugin takes
                no parameter of such a name.
            TypeError, ValueError: a parameter's value is refused by the plugin itself.
        """
        cls = self.load(name)
        try:
            inspect.signature(cls).bind(**params)
        except TypeError as exc:
            raise self._invalid(
                f"{self._kind} {name!r} does not take {params!r}: {exc}"
            ) from None
        return cls(**params)

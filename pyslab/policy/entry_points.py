"""One registry of plugin classes per entry-point group: found by name, checked once, cached.

The policy registry (``pyslab.policies``) and the workload registry (``pyslab.workloads``)
are both instances of :class:`EntryPointRegistry`: entry points are read once per process, on
first use, and each class is checked when it is loaded, with an error naming it when it is not
of the expected base class.

A plugin that cannot be loaded (its module raises on import, or its entry point names something
that is not a ``base`` subclass) is reported, never hidden: :meth:`EntryPointRegistry.load`
raises ``invalid`` naming the entry point, chained to the import error, and
:meth:`EntryPointRegistry.entries` lists it with that error next to the plugins that work, so a
listing survives one broken third-party package.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pyslab.errors import PyslabWarning

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["EntryPointRegistry", "PluginEntry", "describe_parameters"]

P = TypeVar("P")


@dataclass(frozen=True)
class PluginEntry:
    """One registered entry point: its description when it loads, the error when it does not.

    Exactly one of ``description`` and ``error`` is None.
    """

    name: str
    """The entry-point name, e.g. ``"reclaim"``."""
    target: str
    """What the entry point names, ``module:attribute``."""
    description: str | None
    """The plugin class's one-line ``description``; None when it is broken."""
    error: Exception | None
    """What loading it raised (an import error, or a TypeError when it names something that
    is not a subclass of the registry's base); None when it loads."""
    parameters: str = ""
    """The parameters its constructor takes by name, as ``keep=1, batch=None``."""

    @property
    def broken(self) -> bool:
        """True when the entry point cannot be loaded."""
        return self.error is not None

    @property
    def problem(self) -> str:
        """The error as one line, ``Type: message`` (empty when it loads)."""
        if self.error is None:
            return ""
        return " ".join(f"{type(self.error).__name__}: {self.error}".split())


def describe_parameters(cls: type) -> str:
    """The parameters ``cls(...)`` takes by name, as ``keep=1, batch=None`` ("" for none).

    Complexity: O(parameters).
    """
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a class inspect cannot read: say nothing
        return ""
    shown = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            shown.append(f"**{parameter.name}")
        elif parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            default = parameter.default
            shown.append(
                parameter.name if default is parameter.empty else f"{parameter.name}={default!r}"
            )
    return ", ".join(shown)


@dataclass(frozen=True)
class _Parameters:
    """The keyword parameters a plugin class takes, read from its signature once."""

    accepted: frozenset[str]
    required: frozenset[str]
    any_name: bool  # it takes ``**kwargs``
    described: str  # as ``describe_parameters`` says them

    @classmethod
    def of(cls, plugin: type) -> _Parameters | None:
        """``plugin``'s parameters; None when ``inspect`` cannot read them."""
        try:
            signature = inspect.signature(plugin)
        except (TypeError, ValueError):
            return None
        named = [p for p in signature.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return cls(
            accepted=frozenset(p.name for p in named),
            required=frozenset(p.name for p in named if p.default is p.empty),
            any_name=any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()),
            described=describe_parameters(plugin),
        )

    def problem(self, params: dict[str, object]) -> str:
        """What is wrong with building the plugin with ``params`` ("" when nothing is).

        Complexity: O(parameters).
        """
        unknown = [] if self.any_name else [key for key in params if key not in self.accepted]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            plural = "s" if len(unknown) > 1 else ""
            return f"does not take parameter{plural} {listed}"
        missing = sorted(self.required.difference(params))
        if missing:
            plural = "s" if len(missing) > 1 else ""
            return f"needs parameter{plural} {', '.join(map(repr, missing))}"
        return ""


def _takes(parameters: str) -> str:
    return f"it takes: {parameters}" if parameters else "it takes no parameters"


class EntryPointRegistry(Generic[P]):
    """The classes registered under ``group``, each a subclass of ``base``.

    Args:
        group: the entry-point group, e.g. ``"pyslab.policies"``.
        base: the class every plugin must subclass.
        kind: the word for one plugin in messages ("policy", "workload").
        kinds: its plural ("policies", "workloads").
        unknown: the exception for an unregistered name (its message lists the known ones).
        invalid: the exception for a plugin that cannot be imported, is not a ``base``
            subclass, or is given parameters it does not take.
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
        # The base as its layer exports it: pyslab.policy.Policy, pyslab.lab.Workload.
        self._base_path = f"{base.__module__.rpartition('.')[0]}.{base.__qualname__}"
        self._kind = kind
        self._kinds = kinds
        self._unknown = unknown
        self._invalid = invalid
        self._lock = threading.Lock()
        self._entry_points: dict[str, EntryPoint] | None = None
        self._classes: dict[str, type[P]] = {}
        # Each loaded class's parameters, read once when it is loaded: ``make`` runs under an
        # allocator's lock, and ``inspect``'s signature and ``bind`` do not return under
        # persistent Python out of memory (each retries a ``try``/``except`` forever).
        self._parameters: dict[type[P], _Parameters] = {}

    def names(self) -> list[str]:
        """Every registered name, sorted. Complexity: O(plugins); read once per process."""
        with self._lock:
            if self._entry_points is None:
                # Imported on first use: importlib.metadata costs about 30 ms to import, which
                # `import pyslab` would otherwise pay before any plugin is looked up.
                from importlib.metadata import entry_points

                self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
            return sorted(self._entry_points)

    def load(self, name: str) -> type[P]:
        """The class registered as ``name``.

        A failed load is not remembered: the next call tries again.

        Raises:
            ``unknown``: no plugin has that name (the message lists the known ones).
            ``invalid``: the entry point cannot be imported (chained to what importing it
                raised, any Exception but ``MemoryError``), or does not load a ``base``
                subclass.
            MemoryError: Python ran out of memory; nothing is cached (CPython's import of a
                module does not return under persistent exhaustion: a name is safe to build
                under exhaustion once its class has loaded).

        Complexity: O(1) once loaded; the first call imports the plugin's module.
        """
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        entry = self._entry(name)
        try:
            loaded = self._load(entry)
        except MemoryError:
            raise  # out of memory is not the plugin's fault
        except Exception as error:
            raise self._invalid(
                f"{self._kind} entry point {name!r} ({entry.value}) cannot be loaded: "
                f"{type(error).__name__}: {error}"
            ) from error
        if isinstance(loaded, TypeError):
            raise self._invalid(
                f"entry point {name!r} ({entry.value}) is not a {self._base_path} subclass"
            ) from loaded
        return loaded

    def entries(self) -> list[PluginEntry]:
        """Every registered entry point, sorted by name, each with its description or with
        the error loading it raised: one broken plugin does not hide the others.

        Never raises for a plugin that fails to load: any Exception its import raises is
        caught and listed.

        Complexity: O(plugins); imports each plugin's module the first time.
        """
        listed = []
        for name in self.names():
            entry = self._entry(name)
            loaded: type[P] | Exception
            try:
                loaded = self._classes.get(name) or self._load(entry)
            except Exception as error:
                loaded = error
            if isinstance(loaded, Exception):
                listed.append(PluginEntry(name, entry.value, None, loaded))
            else:
                description = str(getattr(loaded, "description", ""))
                listed.append(
                    PluginEntry(name, entry.value, description, None, describe_parameters(loaded))
                )
        return listed

    def descriptions(self) -> dict[str, str]:
        """Every plugin that loads with its one-line description (the class attribute
        ``description``), sorted by name.

        A plugin that fails to load is left out, with a :class:`~pyslab.PyslabWarning`
        naming it and its error (:meth:`entries` lists it; :meth:`load` raises for it).

        Complexity: O(plugins); imports each plugin's module the first time.
        """
        described = {}
        for entry in self.entries():
            if entry.description is None:
                warnings.warn(
                    f"{self._kind} plugin {entry.name!r} ({entry.target}) is left out: "
                    f"{entry.problem}",
                    PyslabWarning,
                    stacklevel=3,
                )
            else:
                described[entry.name] = entry.description
        return described

    def make(self, name: str, params: dict[str, object]) -> P:
        """A fresh instance of the plugin ``name`` built with ``params``.

        Raises:
            ``unknown``, ``invalid``: as :meth:`load`; ``invalid`` also when the plugin takes
                no parameter of such a name (the message lists those it takes), or lacks one
                it needs.
            TypeError, ValueError: a parameter's value is refused by the plugin itself.

        Complexity: O(parameters), plus the plugin's constructor.
        """
        cls = self.load(name)
        parameters = self._parameters.get(cls)
        if parameters is not None:
            problem = parameters.problem(params)
            if problem:
                raise self._invalid(
                    f"{self._kind} {name!r} {problem}; {_takes(parameters.described)}"
                )
        return cls(**params)

    def parameters_of(self, name: str) -> str:
        """The parameters the plugin ``name`` takes, as :func:`describe_parameters` says them,
        read when its class was loaded (so allocation-free once it has).

        Raises: as :meth:`load`. Complexity: O(1) once loaded.
        """
        parameters = self._parameters.get(self.load(name))
        return parameters.described if parameters is not None else ""

    def _entry(self, name: str) -> EntryPoint:
        """The entry point ``name``. Raises: ``unknown``."""
        known = self.names()
        assert self._entry_points is not None
        entry = self._entry_points.get(name)
        if entry is None:
            listed = ", ".join(known) or "none (is pyslab-alloc installed?)"
            raise self._unknown(f"unknown {self._kind} {name!r}; known {self._kinds}: {listed}")
        return entry

    def _load(self, entry: EntryPoint) -> type[P] | TypeError:
        """Import ``entry`` and cache its class; a TypeError (returned, not raised) when it
        names anything but a ``base`` subclass.

        Raises: whatever importing it raises.
        """
        loaded = entry.load()
        if not (isinstance(loaded, type) and issubclass(loaded, self._base)):
            return TypeError(f"{entry.value} is not a {self._base_path} subclass")
        parameters = _Parameters.of(loaded)
        if parameters is not None:
            self._parameters[loaded] = parameters
        self._classes[entry.name] = loaded
        return loaded

"""Workloads: programs of allocations and frees that experiments run under each policy.

A workload is a plugin, found by name like a policy: a subclass of :class:`Workload` registered
under the entry-point group ``pyslab.workloads``::

    [project.entry-points."pyslab.workloads"]
    my-workload = "my_package.my_module:MyWorkload"

after which ``pyslab compare --workload my-workload`` runs it. The built-in workloads are
registered the same way, from ``pyslab_plugins.workloads``; this module never imports them.

A workload never sees addresses. It drives a :class:`WorkloadHeap`, which hands out *block ids*
(small ints) and does the real allocation behind them: the experiment harness times each call
on a :class:`~pyslab.SlabAllocator`, and :func:`pyslab.lab.trace.record_workload` writes the calls
down as a trace. So one workload serves both, and its operations depend on nothing but ``ops``
and ``seed``.

Contract of :meth:`Workload.run`:

1. Deterministic by seed: the same ``ops`` and ``seed`` give the same calls, in the same order
   on each thread. A workload with ``threads > 1`` calls the heap from several threads at once;
   the interleaving between them is the scheduler's, and is what such a workload measures.
2. About ``ops`` calls in all (allocations, frees and reallocs counted alike).
3. It may leave blocks live: they are part of the final state the harness measures.
4. Every thread it starts has ended when it returns.
"""

from __future__ import annotations

from typing import ClassVar, Final, Protocol, runtime_checkable

from pyslab.errors import PyslabError
from pyslab.policy import EntryPointRegistry, PluginEntry

__all__ = [
    "GROUP",
    "UnknownWorkloadError",
    "Workload",
    "WorkloadError",
    "WorkloadHeap",
    "make_workload",
    "workload_entries",
    "workloads",
]

GROUP: Final = "pyslab.workloads"
"""The entry-point group workload plugins are registered under."""


class WorkloadError(PyslabError, ValueError):
    """A workload plugin cannot be loaded, or a workload misused its heap (the message says how)."""


class UnknownWorkloadError(WorkloadError, LookupError):
    """No workload is registered under the name given; the message lists the known names."""


@runtime_checkable
class WorkloadHeap(Protocol):
    """What a workload drives: allocation by block id. Implementations are thread-safe.

    Block ids are handed out by the heap, never reused within one run, and stay valid until
    the block is freed.
    """

    def alloc(self, size: int, align: int | None = None) -> int:
        """Allocate ``size`` bytes (aligned to ``align``; None: the allocator's default).

        Returns the new block's id.
        """
        ...

    def free(self, block: int) -> None:
        """Free the block ``block``.

        Raises:
            WorkloadError: ``block`` is not a live block id.
        """
        ...

    def realloc(self, block: int, size: int, align: int | None = None) -> None:
        """Resize the block ``block`` to ``size`` bytes; its id stays the same.

        Raises:
            WorkloadError: ``block`` is not a live block id.
        """
        ...


class Workload:
    """Base class of every workload plugin: override :meth:`run`.

    Class attributes ``name`` (the entry-point name) and ``description`` (one line) identify
    it; ``threads`` says how many threads call the heap at once.
    """

    name: ClassVar[str] = "workload"
    description: ClassVar[str] = ""
    threads: ClassVar[int] = 1
    """Threads that call the heap concurrently. Above 1 the global order of calls is the
    scheduler's; each thread's own sequence is still fixed by the seed."""

    @property
    def label(self) -> str:
        """How results name this workload: ``name``, unless an instance knows better."""
        return self.name

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Make about ``ops`` calls on ``heap``, chosen by ``seed`` alone (module contract)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<workload {self.label}>"


_REGISTRY: Final = EntryPointRegistry(
    GROUP, Workload, "workload", "workloads", unknown=UnknownWorkloadError, invalid=WorkloadError
)


def workloads() -> dict[str, str]:
    """Every registered workload that loads, with its one-line description, sorted by name.

    A workload whose entry point fails to load (its module raises on import, or it names
    something that is not a ``Workload`` subclass) is left out, with a
    :class:`~pyslab.PyslabWarning` naming it and the error; :func:`workload_entries` lists it
    with its error, and :func:`make_workload` raises :class:`WorkloadError` for it.

    Complexity: O(registered workloads); entry points are read once per process.
    """
    return _REGISTRY.descriptions()


def workload_entries() -> list[PluginEntry]:
    """Every registered workload entry point, sorted by name, with its description when it
    loads and the error it raised when it does not (``pyslab workloads`` prints them).

    Never raises for a plugin that fails to load.

    Complexity: O(registered workloads); each plugin module is imported on the first call.
    """
    return _REGISTRY.entries()


def make_workload(name: str, /, **params: object) -> Workload:
    """Build the workload registered as ``name``, with ``params``.

    Raises:
        UnknownWorkloadError: no workload has that name (the message lists the known ones).
        WorkloadError: the plugin is not a ``Workload``, cannot be imported (chained to the
            import error), or does not take ``params`` (the message lists those it takes).
        TypeError, ValueError: a parameter's value is refused by the workload itself.

    Complexity: O(1) after the first lookup of ``name`` (entry points are read once).
    """
    return _REGISTRY.make(name, params)

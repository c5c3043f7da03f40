"""The lab layer: workloads, traces and the harness that measures policies on them.

What it holds: the :class:`Workload` interface and its registry (entry-point group
``pyslab.workloads``), traces in pyslab's own text format and read from memray captures
(:func:`read_trace`, :func:`write_trace`, :func:`record_workload`), and the harness that runs a
workload or trace on a fresh allocator and measures time and footprint (:func:`run_workload`,
:func:`measure_heap`; :func:`replay_trace` replays a :class:`CompactTrace`, and
:func:`estimate_replay` says how long a configuration whose frees walk every slab will take).

What it may import: the public interface of :mod:`pyslab.core` and :mod:`pyslab.policy`, and
:mod:`pyslab.errors`; memray only inside the functions that read captures.
"""

from __future__ import annotations

from .harness import (
    HeapMetrics,
    MeasuringPageSource,
    ReplayEstimate,
    RunResult,
    estimate_replay,
    measure_heap,
    replay_trace,
    run_workload,
    walks_slabs,
)
from .trace import (
    CompactTrace,
    TraceError,
    TraceEvent,
    read_trace,
    record_workload,
    write_trace,
)
from .workload import (
    UnknownWorkloadError,
    Workload,
    WorkloadError,
    WorkloadHeap,
    make_workload,
    workload_entries,
    workloads,
)

__all__ = [
    "CompactTrace",
    "HeapMetrics",
    "MeasuringPageSource",
    "ReplayEstimate",
    "RunResult",
    "TraceError",
    "TraceEvent",
    "UnknownWorkloadError",
    "Workload",
    "WorkloadError",
    "WorkloadHeap",
    "estimate_replay",
    "make_workload",
    "measure_heap",
    "read_trace",
    "record_workload",
    "replay_trace",
    "run_workload",
    "walks_slabs",
    "workload_entries",
    "workloads",
    "write_trace",
]

"""The observe layer: what an allocator looks like, as text, data and pictures.

What it holds: the statistics report (:func:`report`, :func:`report_dict`, in the manner of
``/proc/slabinfo``), heap maps read from the real free lists (:func:`heap_map`,
:class:`HeapMap`), their rendering as PNG (:func:`render_map`, with matplotlib) and the
animation of two policies side by side (:func:`animate`).

What it may import: the public interface of :mod:`pyslab.core` and :mod:`pyslab.policy`,
:mod:`pyslab.lab` (the workloads an animation runs) and :mod:`pyslab.errors`; matplotlib and
Pillow only inside the functions that draw.
"""

from __future__ import annotations

from .animation import animate
from .heap_report import (
    ClassCounters,
    ClassReport,
    CountsAllocations,
    HeapReport,
    PolicyCounters,
    build_report,
    report,
    report_dict,
)
from .heapmap import ClassMap, HeapMap, SlabMap, SlotState, heap_map
from .render import render_map

__all__ = [
    "ClassCounters",
    "ClassMap",
    "ClassReport",
    "CountsAllocations",
    "HeapMap",
    "HeapReport",
    "PolicyCounters",
    "SlabMap",
    "SlotState",
    "animate",
    "build_report",
    "heap_map",
    "render_map",
    "report",
    "report_dict",
]

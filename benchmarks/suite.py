"""The measurements, by key and number, and the run that strings them together."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import batch, bookkeeping, buffers, hardening, pairs, reclamation, replay, scaling
from .context import Context
from .results import Section

__all__ = ["MEASUREMENTS", "Measurement", "resolve_names", "run"]


@dataclass(frozen=True)
class Measurement:
    """One measurement: its ``--only`` key, its number in the issue and its function."""

    key: str
    number: int
    summary: str
    measure: Callable[[Context], Section]


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("pairs", 1, "alloc+free pair, every configuration vs libc and PyMem",
                pairs.measure),
    Measurement("batch", 2, "batch of allocations, then frees in random order", batch.measure),
    Measurement("buffer", 3, "slab-backed ctypes buffer vs create_string_buffer",
                buffers.measure),
    Measurement("scaling", 4, "free cost as live slabs grow, vs libc's growth", scaling.measure),
    Measurement("memory", 5, "Python bookkeeping bytes per byte mapped", bookkeeping.measure),
    Measurement("reclaim", 6, "mapped bytes and RSS after freeing everything",
                reclamation.measure),
    Measurement("hardening", 7, "cost of each hardening option", hardening.measure),
    Measurement("replay", 8, "pyslab replay of a memray capture vs memray stats",
                replay.measure),
)
"""Every measurement, in number order: what a run without ``--only`` runs."""


def resolve_names(names: Iterable[str]) -> list[Measurement]:
    """The measurements named by key (``pairs``) or number (``1``), in number order.

    Raises:
        ValueError: a name is neither (the message names it and lists the valid ones).
    """
    chosen: set[str] = set()
    for name in names:
        found = [m for m in MEASUREMENTS if name in (m.key, str(m.number))]
        if not found:
            valid = ", ".join(f"{m.key} ({m.number})" for m in MEASUREMENTS)
            raise ValueError(f"unknown measurement {name!r}; valid: {valid}")
        chosen.add(found[0].key)
    return [m for m in MEASUREMENTS if m.key in chosen]


def run(
    context: Context, chosen: Iterable[Measurement], on_section: Callable[[Section], None]
) -> list[Section]:
    """Run each measurement in turn; ``on_section`` sees each result as soon as it exists.

    A measurement that raises becomes a section holding only the error (and its traceback in
    ``--json``): the run goes on with the next one.
    """
    sections = []
    for measurement in chosen:
        start = time.perf_counter()
        try:
            section = measurement.measure(context)
        except Exception as error:  # one broken plugin must not hide every other figure
            section = Section(measurement.key, measurement.number, measurement.summary)
            section.notes.append(f"failed: {type(error).__name__}: {error}")
            section.plot = {"traceback": traceback.format_exc()}
        section.seconds = time.perf_counter() - start
        on_section(section)
        sections.append(section)
    return sections

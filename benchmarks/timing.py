"""The timing core: every measurement of the suite times its contenders through :func:`compare`.

Method (the issue's, and the reason for each step):

- All contenders of one comparison run in one process, interleaved over ``rounds`` rounds;
  round ``i`` runs them in an order rotated by ``i`` (A B C, then B C A, then C A B ...), so
  that slow drift of the machine (frequency, another process, the heap growing) hits every
  contender alike instead of whichever happened to run last.
- One sample is one *batch* of ``n`` operations timed with :func:`time.perf_counter_ns`; ``n``
  is calibrated once per contender so that a batch lasts about ``batch_ns`` (milliseconds),
  which makes the timer's own cost (tens of nanoseconds) negligible, and then kept fixed for
  every round, so that every sample of a contender measures the same work. Calibration reads
  the thread's CPU time, so a trial batch that happened to be descheduled does not shrink
  ``n`` to a handful of operations.
- The cyclic garbage collector is disabled for the timed batch only and restored right after:
  a collection triggered by one contender's garbage must not be billed to another.
- Each batch's CPU time (:func:`time.thread_time_ns`) is recorded beside its wall time. Their
  ratio, the *CPU share*, says how much of the batch other processes took (1.0: none), so a
  reader can tell a slow allocator from a busy machine. On a machine too busy for wall-clock
  figures, ``Settings.clock = "cpu"`` makes the CPU times the reported samples instead.
- The result of a contender is the median of its per-operation times; comparisons use the
  ratio of medians, never a ratio of means (one descheduled batch must not move the result).
- A contender whose timed batches have taken more than ``budget_ns`` (wall) in total stops
  after ``min_rounds`` rounds (an O(slabs) policy at 100,000 slabs would otherwise dominate
  the run); its median is then over fewer samples, which the result records.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Clock", "Contender", "Settings", "Timing", "compare", "time_once", "timed_batch"]

Clock = Literal["wall", "cpu"]


@dataclass(frozen=True)
class Contender:
    """One side of a comparison.

    Attributes:
        name: label in the tables (unique within a comparison).
        run: performs ``n`` operations; this is the only timed call.
        prepare: untimed, called with ``n`` before every timed batch (fresh random indices...).
        finish: untimed, called with ``n`` after every timed batch (undo what ``run`` did).
        ops: a fixed batch size; None lets :func:`compare` calibrate it to ``batch_ns``.
    """

    name: str
    run: Callable[[int], object]
    prepare: Callable[[int], object] | None = None
    finish: Callable[[int], object] | None = None
    ops: int | None = None


@dataclass(frozen=True)
class Settings:
    """How long and how often to time.

    Attributes:
        rounds: rounds of the interleaved comparison (every contender runs once per round).
        batch_ns: target duration of one timed batch, for calibrated contenders.
        min_rounds: rounds a contender always runs, whatever its budget.
        budget_ns: timed wall nanoseconds after which a contender stops (past ``min_rounds``).
        clock: which time the samples report, ``wall`` (``perf_counter_ns``) or ``cpu``.

    Raises:
        ValueError: a count or duration is not positive, or the clock is neither.
    """

    rounds: int = 9
    batch_ns: int = 20_000_000
    min_rounds: int = 3
    budget_ns: int = 30_000_000_000
    clock: Clock = "wall"

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_rounds < 1 or self.batch_ns < 1 or self.budget_ns < 1:
            raise ValueError(f"every count and duration of Settings must be positive: {self!r}")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', not {self.clock!r}")


@dataclass(frozen=True)
class Timing:
    """The batches of one contender, in nanoseconds per operation, one per round it ran."""

    name: str
    ops: int
    wall_ns: tuple[float, ...]
    cpu_ns: tuple[float, ...]
    clock: Clock = "wall"

    @property
    def samples_ns(self) -> tuple[float, ...]:
        """The reported samples: wall or CPU time per operation, as ``clock`` says."""
        return self.cpu_ns if self.clock == "cpu" else self.wall_ns

    @property
    def median_ns(self) -> float:
        """Median nanoseconds per operation."""
        return statistics.median(self.samples_ns)

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples: 0.05 means the rounds agreed within 5%."""
        median = self.median_ns
        return (max(self.samples_ns) - min(self.samples_ns)) / median if median else 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time / wall time over every batch: below 1 when other processes ran meanwhile."""
        wall = sum(self.wall_ns)
        return sum(self.cpu_ns) / wall if wall else 1.0

    def ratio_to(self, other: Timing) -> float:
        """Ratio of medians, ``self / other``: below 1 means ``self`` is faster."""
        return self.median_ns / other.median_ns

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return {
            "name": self.name,
            "ops_per_batch": self.ops,
            "clock": self.clock,
            "median_ns": self.median_ns,
            "spread": self.spread,
            "cpu_share": self.cpu_share,
            "wall_ns": list(self.wall_ns),
            "cpu_ns": list(self.cpu_ns),
        }


def _timed(contender: Contender, n: int) -> tuple[int, int]:
    """Run one batch of ``n`` operations; return its wall and CPU durations in nanoseconds.

    ``prepare`` and ``finish`` run outside the timed region; the collector is disabled only
    around ``run`` and restored to its previous state even if ``run`` raises.
    """
    if contender.prepare is not None:
        contender.prepare(n)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu = time.thread_time_ns()
        start = time.perf_counter_ns()
        contender.run(n)
        elapsed = time.perf_counter_ns() - start
        cpu = time.thread_time_ns() - cpu
    finally:
        if was_enabled:
            gc.enable()
    if contender.finish is not None:
        contender.finish(n)
    return elapsed, cpu


def timed_batch(contender: Contender, n: int) -> int:
    """Run one batch of ``n`` operations and return its wall duration in nanoseconds.

    Complexity: whatever ``n`` operations of the contender cost.
    """
    return _timed(contender, n)[0]


def time_once(action: Callable[[], object]) -> int:
    """Wall nanoseconds one call of ``action`` takes, collector disabled: for one-shot phases.

    (Filling 100 MiB and freeing it all cannot be repeated in rounds; such figures are
    reported beside the tables, never as ratios.)
    """
    return timed_batch(Contender("once", lambda _n: action()), 1)


def _calibrate(contender: Contender, batch_ns: int) -> int:
    """Batch size whose run takes about ``batch_ns`` of CPU; trial batches double as warm-up."""
    if contender.ops is not None:
        _timed(contender, contender.ops)  # warm-up: first-touch page faults, caches
        return contender.ops
    n = 16
    while True:
        cpu = max(_timed(contender, n)[1], 1)
        if cpu * 10 >= batch_ns:
            return max(1, round(n * batch_ns / cpu))
        # Grow fast but not past the target: a batch far too long wastes the run's time.
        n = max(n * 2, min(n * 100, round(n * batch_ns / cpu / 2)))


def compare(contenders: Sequence[Contender], settings: Settings) -> dict[str, Timing]:
    """Time every contender, interleaved over ``settings.rounds`` rotating rounds.

    Returns:
        The :class:`Timing` of each contender by name, in the order given.

    Raises:
        ValueError: two contenders share a name, or there are none.

    Complexity: ``rounds * len(contenders)`` batches of about ``batch_ns`` each, plus one
    calibration per contender.
    """
    names = [c.name for c in contenders]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"contenders need distinct names, got {names!r}")
    sizes = {c.name: _calibrate(c, settings.batch_ns) for c in contenders}
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0)
    count = len(contenders)
    for round_ in range(settings.rounds):
        shift = round_ % count
        for contender in [*contenders[shift:], *contenders[:shift]]:
            name = contender.name
            if round_ >= settings.min_rounds and spent[name] > settings.budget_ns:
                continue
            n = sizes[name]
            elapsed, cpu_elapsed = _timed(contender, n)
            spent[name] += elapsed
            wall[name].append(elapsed / n)
            cpu[name].append(cpu_elapsed / n)
    return {
        name: Timing(name, sizes[name], tuple(wall[name]), tuple(cpu[name]), settings.clock)
        for name in names
    }

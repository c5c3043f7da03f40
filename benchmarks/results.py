"""What a measurement hands back: tables of raw numbers, targets checked, notes, plot data.

Rows hold raw numbers (nanoseconds, bytes, ratios); :mod:`benchmarks.report` formats them for
the terminal and for markdown, and ``--json`` writes them as they are, samples included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Column", "Profile", "Section", "Table", "Target"]


@dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its header and how to format the value.

    ``kind`` is one of ``text``, ``ns`` (time per op), ``ratio`` (``0.42x``), ``bytes``,
    ``percent`` (a fraction shown as %), ``int``, ``float``.
    """

    key: str
    header: str
    kind: str = "text"


@dataclass
class Table:
    """Rows of raw values; keys missing from ``columns`` appear only in ``--json``."""

    title: str
    columns: list[Column]
    rows: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """A target of the issue and whether this run meets it (None: could not be evaluated)."""

    text: str
    met: bool | None
    detail: str


@dataclass
class Section:
    """The outcome of one measurement."""

    key: str
    number: int
    title: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plot: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return asdict(self)


@dataclass(frozen=True)
class Profile:
    """Every size and count of a run; ``FULL`` and ``QUICK`` below, tests shrink them further.

    Attributes:
        name: ``full`` or ``quick``.
        rounds: rounds of each interleaved comparison.
        batch_ns: target duration of one timed batch.
        budget_ns: timed nanoseconds after which a slow contender stops (past 3 rounds).
        pair_sizes: request sizes of measurement 1.
        batch_blocks: blocks allocated then freed in random order (measurement 2).
        batch_rounds: rounds of measurement 2.
        slab_levels: live slab counts of measurement 4.
        churn_size: block size of measurement 4.
        bookkeeping_slabs: slabs built under tracemalloc (measurement 5).
        bookkeeping_every_single: weigh every single policy, not only the default and the
            policies with an owner lookup of their own (measurement 5).
        reclaim_bytes: bytes filled then freed (measurement 6).
        config_limit: most pyslab configurations measured.
        seed: seed of every random order.
    """

    name: str
    rounds: int
    batch_ns: int
    budget_ns: int
    pair_sizes: tuple[int, ...]
    batch_blocks: int
    batch_rounds: int
    slab_levels: tuple[int, ...]
    churn_size: int
    bookkeeping_slabs: int
    reclaim_bytes: int
    bookkeeping_every_single: bool
    config_limit: int = 24
    seed: int = 7


FULL = Profile(
    name="full",
    rounds=15,
    batch_ns=5_000_000,
    budget_ns=6_000_000_000,
    pair_sizes=(16, 64, 512),
    batch_blocks=100_000,
    batch_rounds=5,
    slab_levels=(1, 100, 10_000, 100_000),
    churn_size=512,
    bookkeeping_slabs=100_000,
    reclaim_bytes=100 << 20,
    bookkeeping_every_single=False,
)

QUICK = Profile(
    name="quick",
    rounds=7,
    batch_ns=2_000_000,
    budget_ns=1_000_000_000,
    pair_sizes=(16, 64, 512),
    batch_blocks=10_000,
    batch_rounds=3,
    slab_levels=(1, 100, 10_000),
    churn_size=512,
    bookkeeping_slabs=10_000,
    reclaim_bytes=10 << 20,
    bookkeeping_every_single=True,
)

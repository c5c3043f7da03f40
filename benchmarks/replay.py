"""Measurement 8: ``pyslab replay`` of a real program's memray capture vs ``memray stats``.

Target: replaying a capture under ``dict-lookup+reclaim`` takes at most 5x the time ``memray
stats`` takes on the same file (memray's own reader, in C++, with its statistics).

The capture is made on the fly: ``python -m json.tool`` pretty-prints a JSON document
generated from the profile's seed (2 MB in a full run, 100 KB with ``--quick``), recorded with
``memray run --trace-python-allocators``, so that it holds the Python object allocator's
traffic. Both commands then run as the user runs them, in a process of their own, interleaved
over rounds (``memray stats``, then ``pyslab replay -q``, alternately), and the result is the
ratio of their medians. Each round's CPU time (the children's user and system time) is kept
beside its wall time: their ratio is the CPU share, and on a busy machine the ratio of CPU
times is the steadier figure (``--clock cpu`` makes it the one the target is checked on).

pyslab's own ``--json`` gives the time of the replay loop itself (the time it waited for
events still being read left out); the rest of its wall time is starting Python, the part
of the reading that the replay did not overlap (the capture is read in a child process while
the replay runs) and reporting.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .context import Context
from .results import Column, Section, Table, Target

__all__ = ["CONFIGURATION", "TARGET", "document", "make_capture", "measure", "run_timed"]

TARGET = 5.0
"""``pyslab replay`` may take at most this many times ``memray stats``'s time."""
CONFIGURATION = "dict-lookup+reclaim"
FULL_BYTES = 2_000_000
QUICK_BYTES = 100_000
ROUNDS = {"full": 5, "quick": 3}
TIMEOUT = 600
"""Seconds one command may run."""


def document(size: int, seed: int) -> str:
    """A JSON document of about ``size`` bytes: records of ids, names, tags and nested values,
    the same for the same seed."""
    rng = random.Random(seed)

    def value(depth: int) -> object:
        pick = rng.random()
        if depth > 3 or pick < 0.4:
            return rng.choice([
                rng.randint(0, 10**6), rng.random(), f"s{rng.randint(0, 10**5)}", True, None,
            ])
        if pick < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 6))]
        return {f"k{rng.randint(0, 1000)}": value(depth + 1) for _ in range(rng.randint(0, 6))}

    items: list[object] = []
    written = 2
    while written < size:
        item = {
            "id": len(items), "name": f"item-{len(items)}",
            "tags": [rng.choice("abcdef") for _ in range(3)], "v": value(0),
        }
        items.append(item)
        written += len(json.dumps(item)) + 2
    return json.dumps(items)


def make_capture(directory: Path, size: int, seed: int) -> Path:
    """Record ``python -m json.tool`` on a document of about ``size`` bytes; return the capture.

    Raises: subprocess.CalledProcessError, subprocess.TimeoutExpired.
    """
    source = directory / "document.json"
    source.write_text(document(size, seed), encoding="utf-8")
    capture = directory / "json-tool.bin"
    subprocess.run(
        [sys.executable, "-m", "memray", "run", "--quiet", "--force",
         "--trace-python-allocators", "-o", str(capture), "-m", "json.tool", str(source)],
        check=True, timeout=TIMEOUT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return capture


def run_timed(command: list[str]) -> tuple[float, float]:
    """Run ``command`` (its output discarded); return its (wall, CPU) seconds, the CPU time
    being the user and system time of the children it took.

    Raises: subprocess.CalledProcessError, subprocess.TimeoutExpired.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, timeout=TIMEOUT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(context: Context, size: int | None = None, rounds: int | None = None) -> Section:
    """Make the capture, then time ``memray stats`` and ``pyslab replay`` on it, interleaved."""
    section = Section("replay", 8, "pyslab replay of a memray capture vs memray stats")
    quick = context.profile.name == "quick"
    size = size or (QUICK_BYTES if quick else FULL_BYTES)
    rounds = rounds or ROUNDS.get(context.profile.name, 3)
    with tempfile.TemporaryDirectory(prefix="pyslab-bench-replay-") as directory:
        root = Path(directory)
        capture = make_capture(root, size, context.profile.seed)
        report = root / "replay.json"
        stats_command = [sys.executable, "-m", "memray", "stats", str(capture)]
        replay_command = [sys.executable, "-m", "pyslab.cli", "replay", str(capture),
                          "-p", CONFIGURATION, "-q", "--json", str(report)]
        times: dict[str, list[tuple[float, float]]] = {"stats": [], "replay": []}
        loops: list[float] = []
        for _ in range(rounds):
            times["stats"].append(run_timed(stats_command))
            times["replay"].append(run_timed(replay_command))
            data = json.loads(report.read_text(encoding="utf-8"))
            loops.append(float(data["runs"][0]["seconds"]))
        capture_bytes = capture.stat().st_size
        events = int(data["meta"]["events"])
        records = int(data["meta"]["capture"]["records"])
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    share = {name: sum(c for _, c in runs) / sum(w for w, _ in runs)
             for name, runs in times.items()}
    loop = statistics.median(loops)
    rows: list[dict[str, object]] = [
        {"contender": "memray stats", "wall_s": wall["stats"], "cpu_s": cpu["stats"],
         "wall_ratio": 1.0, "cpu_ratio": 1.0, "cpu_share": share["stats"],
         "samples": [list(t) for t in times["stats"]]},
        {"contender": f"pyslab replay -p {CONFIGURATION}", "wall_s": wall["replay"],
         "cpu_s": cpu["replay"], "wall_ratio": wall["replay"] / wall["stats"],
         "cpu_ratio": cpu["replay"] / cpu["stats"], "cpu_share": share["replay"],
         "loop_s": loop, "rest_s": wall["replay"] - loop, "loops": loops,
         "samples": [list(t) for t in times["replay"]]},
    ]
    section.tables.append(Table(
        f"json.tool on a {size / 1e6:.1f} MB document: {records:,} records, {events:,} events, "
        f"capture {capture_bytes / 1e6:.1f} MB; medians of {rounds} interleaved rounds "
        f"(target: replay at most {TARGET:g}x memray stats)",
        [
            Column("contender", "command"),
            Column("wall_s", "wall s", "float"),
            Column("wall_ratio", "wall / memray stats", "ratio"),
            Column("cpu_s", "CPU s", "float"),
            Column("cpu_ratio", "CPU / memray stats", "ratio"),
            Column("loop_s", "of which replay loop s", "float"),
            Column("rest_s", "the rest s", "float"),
            Column("cpu_share", "CPU share", "percent"),
        ],
        rows,
    ))
    by_cpu = context.clock == "cpu"
    ratio = rows[1]["cpu_ratio" if by_cpu else "wall_ratio"]
    assert isinstance(ratio, float)
    section.targets.append(Target(
        f"pyslab replay -p {CONFIGURATION} at most {TARGET:g}x memray stats "
        f"({'CPU' if by_cpu else 'wall'} time)",
        ratio <= TARGET,
        f"{ratio:.1f}x ({rows[1]['wall_s']:.2f} s against {rows[0]['wall_s']:.2f} s wall; "
        f"{rows[1]['cpu_ratio']:.1f}x in CPU time)"
        + ("" if ratio <= TARGET else f"; needs {ratio / TARGET:.1f}x less time"),
    ))
    section.notes.append(
        f"the replay loop alone (every event one timed call of the allocator) took {loop:.2f} s "
        f"of pyslab's {wall['replay']:.2f} s: {loop / wall['stats']:.1f}x memray stats by itself"
    )
    return section

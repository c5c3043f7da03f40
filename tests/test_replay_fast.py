"""Replaying from compact arrays: the same figures as the general harness, a capture read once
for every configuration, progress on a terminal only, and the warning before a slow walk."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pyslab.cli.replay
import pyslab.lab
from pyslab.cli import main
from pyslab.lab import (
    CompactTrace,
    Workload,
    WorkloadHeap,
    estimate_replay,
    replay_trace,
    walks_slabs,
)
from pyslab.lab.trace import (
    OP_ALLOC,
    OP_FREE,
    CaptureReader,
    TraceEvent,
    TraceWorkload,
    read_memray_capture,
    read_memray_capture_isolated,
    write_trace,
)

TIMING = ("alloc_ns", "free_ns", "realloc_ns", "median_alloc_ns", "median_free_ns",
          "median_realloc_ns", "ns_per_alloc", "ns_per_free", "ns_per_realloc", "seconds")


def _events(count: int, seed: int) -> list[TraceEvent]:
    """A trace with everything a plain one may hold: reused ids, reallocs across classes and
    beyond the largest, alignments, blocks live at the end."""
    rng = random.Random(seed)
    live: list[int] = []
    idle = list(range(200))
    events: list[TraceEvent] = []
    while len(events) < count:
        pick = rng.random()
        if live and pick < 0.4:
            block = live.pop(rng.randrange(len(live)))
            idle.append(block)
            events.append(TraceEvent("f", block))
        elif live and pick < 0.5:
            align = rng.choice([None, None, 16, 64])
            events.append(TraceEvent("r", rng.choice(live), rng.randint(1, 1500), align))
        elif idle:
            block = idle.pop(rng.randrange(len(idle)))
            live.append(block)
            align = rng.choice([None, None, None, 32, 128])
            events.append(TraceEvent("a", block, rng.randint(1, 1300), align))
    return events


def _figures(result: pyslab.lab.RunResult) -> dict[str, object]:
    data = result.to_dict()
    for key in TIMING:
        data.pop(key)
    return data


class _Events(Workload):
    """The same events as a workload of the general harness (not a TraceWorkload)."""

    name = "events"

    def __init__(self, events: list[TraceEvent]) -> None:
        self._trace = TraceWorkload(events)

    @property
    def label(self) -> str:
        return "trace"

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        self._trace.run(heap, ops, seed)


@pytest.mark.parametrize("configuration", ["first-fit", "dict-lookup+reclaim"])
def test_the_array_replay_measures_what_the_general_harness_measures(configuration: str) -> None:
    events = _events(6000, seed=3)
    general = pyslab.lab.run_workload(_Events(events), configuration, ops=len(events))
    fast = replay_trace(TraceWorkload(events), configuration)
    assert _figures(fast) == _figures(general)
    assert fast.allocs + fast.frees + fast.reallocs == len(events)
    assert len(fast.samples) == len(general.samples) > 100
    # run_workload takes the fast path for a trace, with the same figures.
    assert _figures(pyslab.lab.run_workload(TraceWorkload(events), configuration,
                                            ops=len(events))) == _figures(general)


def test_a_compact_trace_gives_its_events_back_and_counts_requested_bytes() -> None:
    events = _events(3000, seed=8)
    trace = CompactTrace.from_events(events)
    assert trace.events() == events
    assert (trace.ops.typecode, trace.blocks.typecode, trace.sizes.typecode) == ("B", "q", "q")
    assert trace.allocs + trace.frees + trace.reallocs == len(trace) == len(events)
    assert trace.labels is not None and trace.aligns is not None  # reused ids, alignments
    # Block k is the one the k-th allocation made.
    assert [b for op, b in zip(trace.ops, trace.blocks, strict=True) if op == OP_ALLOC] == list(
        range(trace.block_count)
    )
    points = list(range(0, len(trace) + 1, 97))
    # The fast sums (no size above the bound) agree with the event-by-event count.
    assert trace.requested_bytes(4096, points) == trace._requested_slowly(4096, points)
    live: dict[int, int] = {}
    for op, block, size, _ in events:
        if op == "f":
            del live[block]
        else:
            live[block] = size
    assert trace.requested_bytes(4096, [len(trace)]) == [sum(live.values())]
    assert trace.requested_bytes(1024, [len(trace)]) == [
        sum(s for s in live.values() if s <= 1024)
    ]
    assert sorted(trace.final_sizes) == sorted(live.values())


def test_a_bad_event_sequence_is_refused_when_compacted() -> None:
    with pytest.raises(pyslab.lab.WorkloadError, match="event 2 frees block 9, which is not"):
        CompactTrace.from_events([TraceEvent("a", 1, 8), TraceEvent("f", 9)])
    with pytest.raises(pyslab.lab.WorkloadError, match="allocates block 1, which is live"):
        CompactTrace.from_events([TraceEvent("a", 1, 8), TraceEvent("a", 1, 8)])


# --- memray captures -----------------------------------------------------------------------


def _record(path: Path, program: str) -> Path:
    source = path.with_suffix(".py")
    source.write_text(program)
    subprocess.run(
        [sys.executable, "-m", "memray", "run", "--quiet", "--force",
         "--trace-python-allocators", "-o", str(path), str(source)],
        check=True, timeout=120, capture_output=True,
    )
    return path


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture of a small real program (about 25,000 records)."""
    pytest.importorskip("memray")
    return _record(
        tmp_path_factory.mktemp("fast") / "capture.bin",
        "import json\n"
        "rows = [{'id': i, 'name': f'row-{i}', 'tags': [i % 3, str(i)]} for i in range(1500)]\n"
        "text = json.dumps(rows)\n"
        "del rows\n"
        "print(len(json.loads(text)))\n",
    )


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture whose first-fit replay takes minutes: 150,000 blocks of the 1024-byte class
    (four a slab) live at once, then freed, each free walking thousands of slabs."""
    pytest.importorskip("memray")
    return _record(
        tmp_path_factory.mktemp("large") / "large.bin",
        "keep = [bytes(900) for _ in range(150_000)]\n"
        "del keep\n",
    )


def test_reading_a_capture_reports_progress_and_fills_arrays(capture: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    read = read_memray_capture(capture, progress=lambda done, total: seen.append((done, total)))
    records = read.summary.records
    assert seen[-1] == (records, records)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert len(seen) >= 3  # the header's count, memray's, then every 65,536 records and the end
    assert read.trace.ops.typecode == "B" and len(read.trace) == len(read.events)
    isolated: list[tuple[int, int | None]] = []
    again = read_memray_capture_isolated(capture, progress=lambda d, t: isolated.append((d, t)))
    assert isolated == seen
    assert again.events == read.events and again.summary == read.summary


def test_several_configurations_read_the_capture_once(
    capsys: pytest.CaptureFixture[str], capture: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []

    class Counted(CaptureReader):
        def __init__(self, path: str, **options: Any) -> None:
            reads.append(path)
            super().__init__(path, **options)

    monkeypatch.setattr(pyslab.cli.replay, "CaptureReader", Counted)
    out = tmp_path / "runs.json"
    status = main(["replay", str(capture), "-p", "dict-lookup", "-p", "reclaim",
                   "-p", "dict-lookup+reclaim", "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    assert reads == [str(capture)]
    runs = json.loads(out.read_text())["runs"]
    assert [r["configuration"] for r in runs] == ["dict-lookup", "reclaim", "dict-lookup+reclaim"]
    events = read_memray_capture(capture).trace
    assert all(r["allocs"] == events.allocs and r["frees"] == events.frees for r in runs)
    # The first one replayed the events as they arrived from the child: the same figures.
    whole = replay_trace(TraceWorkload(events, "capture.bin"), "dict-lookup")
    assert {k: v for k, v in runs[0].items() if k not in TIMING} == {
        k: v for k, v in whole.to_dict().items() if k not in TIMING
    }


def test_a_capture_arrives_whole_while_it_is_read(capture: Path) -> None:
    whole = read_memray_capture(capture)
    with CaptureReader(capture) as reader:
        first = reader.more(1000)
        assert first >= 1000 or first == len(whole.trace)
        assert reader.more(10**9) == len(whole.trace)
        read = reader.finish()
    for name in ("ops", "blocks", "sizes", "realloc_at", "realloc_old", "final_blocks",
                 "final_sizes"):
        assert getattr(read.trace, name) == getattr(whole.trace, name), name
    assert read.trace.block_count == whole.trace.block_count
    assert read.summary == whole.summary


def _on_a_terminal(args: list[str], timeout: float = 120) -> str:
    """Run ``python -m pyslab.cli ARGS`` with a pseudo-terminal as stdout and stderr; return
    everything it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pyslab.cli", *args], stdin=follower, stdout=follower,
        stderr=follower, env={**os.environ, "COLUMNS": "160"},
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 5)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")[-2000:]
    return output.decode(errors="replace")


@pytest.mark.timeout(180)
def test_on_a_terminal_reading_and_replaying_show_progress(capture: Path) -> None:
    text = _on_a_terminal(["replay", str(capture), "-p", "dict-lookup", "-p", "reclaim"])
    assert "reading capture.bin" in text and "records" in text
    assert "capture.bin under dict-lookup" in text and "capture.bin under reclaim" in text
    assert "events" in text and " left" in text and "\u2501" in text
    assert "[1/2]" not in text  # no plain lines on a terminal
    assert "peak KiB" in text  # and the table


@pytest.mark.timeout(180)
def test_quiet_shows_no_progress_even_on_a_terminal(capture: Path) -> None:
    text = _on_a_terminal(["replay", str(capture), "-p", "dict-lookup", "-q"])
    assert "reading" not in text and "under dict-lookup" not in text and "[1/1]" not in text
    assert "\u2501" not in text and " left" not in text
    assert "peak KiB" in text


def test_piped_there_is_no_bar_and_quiet_leaves_stderr_empty(capture: Path) -> None:
    command = [sys.executable, "-m", "pyslab.cli", "replay", str(capture), "-p", "dict-lookup"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("[1/1] capture.bin under dict-lookup: ")
    assert "reading" not in run.stderr and "/s" not in run.stderr
    quiet = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=120,
                           check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.splitlines()[0] == run.stdout.splitlines()[0]  # what was read
    assert "dict-lookup" in quiet.stdout and "peak KiB" in quiet.stdout


def test_compare_takes_quiet_too(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["compare", "--ops", "300", "-w", "churn", "-p", "dict-lookup", "-q"])
    captured = capsys.readouterr()
    assert status == 0 and captured.err == "" and "churn" in captured.out


# --- the warning before an O(slabs) configuration ----------------------------------------


def test_which_configurations_walk_the_slabs() -> None:
    assert walks_slabs("first-fit") and walks_slabs("first-fit+reclaim")
    assert not walks_slabs("dict-lookup") and not walks_slabs("dict-lookup+reclaim")
    trace = CompactTrace.from_events([TraceEvent("a", 0, 8), TraceEvent("f", 0)])
    assert estimate_replay(trace, "dict-lookup") is None


def test_the_walk_model_counts_the_slabs_first_fit_maps(capture: Path) -> None:
    trace = read_memray_capture(capture).trace
    estimate = estimate_replay(trace, "first-fit")
    assert estimate is not None
    result = replay_trace(trace, "first-fit")
    # first-fit maps a slab only when every slab of the class is full: the model's count is
    # exact, and so the walks' lengths follow.
    assert estimate.peak_slabs == result.slabs_created
    assert 0 < estimate.mean_walk <= estimate.peak_slabs
    assert estimate.per_call_ns > 0 and estimate.per_slab_ns > 0
    assert estimate.seconds > estimate.base_seconds > 0


@pytest.mark.timeout(120)
def test_a_large_capture_warns_before_first_fit_runs(large: Path) -> None:
    # 37,500 slabs of the largest class, walked by each of 150,000 frees: even at 10 ns a
    # slab, more than a minute. The warning comes first, before any replay; the run is
    # stopped there.
    process = subprocess.Popen(
        [sys.executable, "-m", "pyslab.cli", "replay", str(large), "-p", "dict-lookup",
         "-p", "first-fit"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
    finally:
        process.kill()
        process.wait(timeout=60)
    assert line.startswith("pyslab replay: warning: first-fit: every free walks the slabs "
                           "(O(slabs)): on large.bin, about "), line
    peak = re.search(r"\(([0-9,]+) at the peak\)", line)
    assert peak is not None and int(peak.group(1).replace(",", "")) >= 37_500, line
    assert "its replay should take about " in line and "dict-lookup: about" in line


def test_a_small_capture_replays_under_first_fit_without_a_warning(
    capsys: pytest.CaptureFixture[str], capture: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    status = main(["replay", str(capture), "-p", "first-fit", "-q"])
    assert status == 0 and capsys.readouterr().err == ""
    monkeypatch.setattr(pyslab.cli.replay, "SLOW_SECONDS", 0.0)  # every estimate is "long"
    status = main(["replay", str(capture), "-p", "first-fit", "-q"])
    err = capsys.readouterr().err
    assert status == 0
    assert err.count("warning:") == 1 and "pyslab replay: warning: first-fit: " in err


def test_a_plain_trace_replays_from_its_arrays_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    events = _events(2000, seed=11)
    path = tmp_path / "mixed.trace"
    write_trace(events, path)
    out = tmp_path / "r.json"
    assert main(["replay", str(path), "-p", "dict-lookup", "-q", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    expected = replay_trace(TraceWorkload(events, "mixed.trace"), "dict-lookup")
    assert {k: run[k] for k in ("allocs", "frees", "reallocs", "peak_mapped_bytes")} == {
        "allocs": expected.allocs, "frees": expected.frees, "reallocs": expected.reallocs,
        "peak_mapped_bytes": expected.peak_mapped_bytes,
    }
    assert sum(op == OP_FREE for op in CompactTrace.from_events(events).ops) == run["frees"]

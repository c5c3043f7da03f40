"""Traces: the plain format round-trips and rejects bad files by line; memray captures of real
programs convert with every record used or skipped by a documented reason; replays run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyslab
import pyslab.lab.trace
from pyslab.lab.trace import (
    MAX_ALIGNMENT,
    MAX_SIZE,
    PartialCaptureError,
    TraceError,
    TraceEvent,
    TraceWorkload,
    format_trace,
    is_memray_capture,
    parse_trace,
    read_memray_capture,
    read_trace,
    write_trace,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "record_and_replay.py"


# --- the plain format ---------------------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    doc = pyslab.lab.trace.__doc__ or ""
    block = doc.split("one event a line::\n\n", 1)[1].split("\n\n", 1)[0]
    events = parse_trace(textwrap.dedent(block).splitlines(), "docstring")
    assert events == [
        TraceEvent("a", 0, 24), TraceEvent("a", 1, 100, 64), TraceEvent("r", 0, 48),
        TraceEvent("f", 1),
    ]


@pytest.mark.parametrize("name", ["size-mix", "producer-consumer", "adversary"])
def test_a_recorded_workload_round_trips_through_a_file(name: str, tmp_path: Path) -> None:
    events = pyslab.lab.record_workload(pyslab.lab.make_workload(name), 2000, seed=5)
    path = tmp_path / f"{name}.trace"
    assert write_trace(events, path) == len(events)
    assert read_trace(path) == events


def test_alignment_and_reuse_of_ids_round_trip(tmp_path: Path) -> None:
    events = [
        TraceEvent("a", 3, 100, 64), TraceEvent("r", 3, 700, 256), TraceEvent("f", 3),
        TraceEvent("a", 3, 8), TraceEvent("a", 9, 5000),
    ]
    write_trace(events, tmp_path / "t")
    text = (tmp_path / "t").read_text()
    assert text == "pyslab-trace 1\na 3 100 64\nr 3 700 256\nf 3\na 3 8\na 9 5000\nend 5\n"
    assert read_trace(tmp_path / "t") == events


GOOD_START = "pyslab-trace 1\na 1 16\na 2 32\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD_START + "x 1\nend 3\n", r":4: unknown event 'x'"),
        (GOOD_START + "f 7\nend 3\n", r":4: free of unknown block 7 \(never allocated\)"),
        (GOOD_START + "f 1\nf 1\nend 4\n", r":5: free of unknown block 1 \(freed at line 4\)"),
        (GOOD_START + "r 5 10\nend 3\n", r":4: realloc of unknown block 5"),
        (GOOD_START + "a 2 8\nend 3\n", r":4: block 2 allocated again while live \(since line 3\)"),
        (GOOD_START + "f 1\n", r":4: truncated: no 'end' line after 3 events"),
        (GOOD_START + "f 1\nend", r":5: expected 'end COUNT'"),
        (GOOD_START + "end 5\n", r":4: 'end 5' but the trace has 2 events"),
        (GOOD_START + "end 2\na 3 8\n", r":5: event after the 'end' line 4"),
        (GOOD_START + "a 3 0\nend 3\n", r":4: size must be positive, not 0"),
        (GOOD_START + "a 3 -8\nend 3\n", r":4: expected a non-negative integer, found '-8'"),
        (GOOD_START + "a 3 8 48\nend 3\n", r":4: alignment must be a power of two, not 48"),
        (GOOD_START + "a 3 8 8 8\nend 3\n", r":4: expected 'a ID SIZE \[ALIGN\]'"),
        (GOOD_START + "f\nend 3\n", r":4: expected 'f ID'"),
        (GOOD_START + "a x 8\nend 3\n", r":4: expected a non-negative integer, found 'x'"),
        (GOOD_START + f"a 3 {MAX_SIZE + 1}\nend 3\n", f":4: size '{MAX_SIZE + 1}' is larger"),
        (GOOD_START + f"a 3 8 {MAX_ALIGNMENT * 2}\nend 3\n",
         f":4: alignment '{MAX_ALIGNMENT * 2}' is larger"),
        (GOOD_START + "a 3 \u00b2\nend 3\n", ":4: expected a non-negative integer, found '\u00b2'"),
        (GOOD_START + "a 3 \u0663\nend 3\n", r":4: .* \(numbers are written in ASCII digits 0-9\)"),
        (GOOD_START + f"a 3 {'8' * 4301}\nend 3\n", r":4: size '8{39}8'\.\.\. \(4,301 characters"),
        (GOOD_START + "a\u00a03 8\nend 3\n", r":4: unknown event 'a\\xa03'"),
        ("pyslab-trace 2\nend 0\n", r":1: not a pyslab trace: expected 'pyslab-trace 1'"),
        ("a 1 16\nend 1\n", r":1: not a pyslab trace"),
        ("", r"empty file"),
    ],
)
def test_a_bad_trace_is_rejected_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.trace"
    path.write_text(text)
    with pytest.raises(TraceError, match=f"bad.trace{message}" if message[0] == ":" else message):
        read_trace(path)


def test_a_binary_file_is_not_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"pyslab-trace 1\n\xff\xfe\x00")
    with pytest.raises(TraceError, match="not UTF-8 text"):
        read_trace(path)


def test_a_trace_error_is_a_value_error_carrying_file_and_line() -> None:
    with pytest.raises(ValueError) as caught:
        parse_trace(["pyslab-trace 1", "", "# comment", "f 4"], "mine")
    assert isinstance(caught.value, TraceError)
    assert (caught.value.source, caught.value.line) == ("mine", 4)


def test_the_recorder_refuses_what_a_trace_cannot_say() -> None:
    recorder = pyslab.lab.trace.TraceRecorder()
    with pytest.raises(pyslab.lab.WorkloadError, match="free of block 0"):
        recorder.free(0)
    with pytest.raises(pyslab.lab.WorkloadError, match="asked for 0 bytes"):
        recorder.alloc(0)
    with pytest.raises(pyslab.lab.WorkloadError, match="alignment 3"):
        recorder.alloc(8, 3)
    with pytest.raises(pyslab.lab.WorkloadError, match="a trace holds at most 4,294,967,296"):
        recorder.alloc(MAX_SIZE + 1)
    with pytest.raises(pyslab.lab.WorkloadError, match="a trace holds at most 1,048,576"):
        recorder.alloc(8, MAX_ALIGNMENT * 2)
    assert recorder.events == []


def test_replaying_a_trace_issues_exactly_its_events() -> None:
    events = pyslab.lab.record_workload(pyslab.lab.make_workload("size-mix"), 3000, seed=1)
    result = pyslab.lab.run_workload(TraceWorkload(events, "mix"), "dict-lookup", ops=len(events))
    assert result.workload == "mix"
    assert (result.allocs, result.frees, result.reallocs) == tuple(
        sum(e.op == op for e in events) for op in "afr"
    )
    # The same sequence run directly gives the same heap: replay is faithful.
    direct = pyslab.lab.run_workload("size-mix", "dict-lookup", ops=3000, seed=1)
    assert direct.final == result.final
    assert direct.slabs_created == result.slabs_created


# --- memray captures ----------------------------------------------------------------------------

memray = pytest.importorskip("memray")

PROGRAM = """\
from memray._test import MemoryAllocator, PymallocDomain, PymallocMemoryAllocator

native = MemoryAllocator()
native.malloc(777)
native.realloc(999)   # memray: malloc(1), then a free of it and a realloc record
native.free()
native.malloc(4321)   # beyond 1024: skipped as too-large
native.free()
python = PymallocMemoryAllocator(PymallocDomain.PYMALLOC_OBJECT)
python.malloc(77)
python.realloc(99)
python.free()
"""


def record(tmp_path: Path, name: str, *options: str, program: str = PROGRAM) -> Path:
    """Run ``program`` under ``memray run`` with ``options``; return the capture."""
    source = tmp_path / f"{name}.py"
    source.write_text(program)
    capture = tmp_path / f"{name}.bin"
    subprocess.run(
        [sys.executable, "-m", "memray", "run", "--quiet", "--force", *options, "-o",
         str(capture), str(source)],
        check=True, timeout=60, capture_output=True,
    )
    return capture


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One capture recorded with --trace-python-allocators, one without."""
    root = tmp_path_factory.mktemp("captures")
    return {
        "python": record(root, "python", "--trace-python-allocators"),
        "native": record(root, "native"),
    }


def _life(events: list[TraceEvent], block: int) -> list[TraceEvent]:
    """Every event of ``block`` (the conversion never reuses an id)."""
    return [e for e in events if e.block == block]


def test_a_native_capture_keeps_malloc_traffic_and_joins_realloc_pairs(
    captures: dict[str, Path],
) -> None:
    capture = read_memray_capture(captures["native"])  # auto: native, no python tracing
    summary = capture.summary
    assert summary.family == "native"
    assert summary.records == summary.used + summary.skipped_total > 0
    assert summary.skipped.get("too-large", 0) >= 1
    assert set(summary.skipped) <= {"other-allocator", "too-large", "zero-size", "unknown-address"}
    # malloc(1) then realloc to 999 is one block: allocated, resized in one event, freed.
    resized = next(e.block for e in capture.events if e.op == "r" and e.size == 999)
    assert _life(capture.events, resized) == [
        TraceEvent("a", resized, 1), TraceEvent("r", resized, 999), TraceEvent("f", resized),
    ]
    leaked = next(e.block for e in capture.events if e.size == 777)  # memray's helper leaks it
    assert _life(capture.events, leaked) == [TraceEvent("a", leaked, 777)]
    assert not any(e.size == 4321 for e in capture.events)
    assert parse_trace(format_trace(capture.events)) == capture.events  # a valid trace


def test_a_python_capture_keeps_the_object_allocator_traffic(captures: dict[str, Path]) -> None:
    capture = read_memray_capture(captures["python"])
    summary = capture.summary
    assert summary.family == "python"
    assert summary.records == summary.used + summary.skipped_total
    block = next(e.block for e in capture.events if e.op == "r" and e.size == 99)
    assert _life(capture.events, block) == [
        TraceEvent("a", block, 77), TraceEvent("r", block, 99), TraceEvent("f", block),
    ]
    assert not any(e.size in (777, 999) for e in capture.events)  # the native family
    assert sum(e.op == "r" for e in capture.events) >= 1
    assert parse_trace(format_trace(capture.events)) == capture.events
    native = read_memray_capture(captures["python"], allocators="native")
    assert any(e.size == 777 for e in native.events)
    assert native.summary.skipped["other-allocator"] > summary.skipped.get("other-allocator", 0)


def test_max_size_decides_what_is_too_large(captures: dict[str, Path]) -> None:
    wide = read_memray_capture(captures["native"], max_size=8192)
    assert any(e.size == 4321 for e in wide.events)
    narrow = read_memray_capture(captures["native"], max_size=64)
    assert max(e.size for e in narrow.events) <= 64
    assert narrow.summary.skipped["too-large"] > wide.summary.skipped.get("too-large", 0)


def test_a_replayed_capture_validates_under_each_configuration(captures: dict[str, Path]) -> None:
    events = read_memray_capture(captures["python"]).events
    for configuration in ("first-fit", "dict-lookup+reclaim"):
        result = pyslab.lab.run_workload(TraceWorkload(events), configuration, ops=len(events))
        assert result.allocs == sum(e.op == "a" for e in events)


def test_a_truncated_capture_is_refused_or_read_up_to_its_last_whole_record_on_request(
    tmp_path: Path,
) -> None:
    # Uncompressed, a capture is a sequence of records: a cut one is readable up to the cut,
    # and the header (rewritten when the recording ends) tells how many there should be.
    capture = record(tmp_path, "plain", "--no-compress", "--trace-python-allocators")
    whole = capture.read_bytes()
    total = read_memray_capture(capture).summary
    assert total.announced == total.records and not total.partial
    cut = tmp_path / "cut.bin"
    cut.write_bytes(whole[: len(whole) // 2])
    assert is_memray_capture(cut)
    with pytest.raises(PartialCaptureError, match=(
        rf"cut.bin: truncated or damaged memray capture: only [0-9,]+ of the "
        rf"{total.records:,} records its header announces can be read$"
    )) as caught:
        read_memray_capture(cut)
    assert 0 < caught.value.records < caught.value.announced == total.records
    partial = read_memray_capture(cut, accept_partial=True)
    assert partial.summary.records == caught.value.records
    assert partial.summary.announced == total.records and partial.summary.partial
    assert parse_trace(format_trace(partial.events)) == partial.events


def test_a_truncated_compressed_capture_is_refused_naming_the_records_read(
    captures: dict[str, Path], tmp_path: Path,
) -> None:
    # Compressed (memray's default), a cut inside the first block leaves memray nothing to
    # read; pyslab still reads the header, at the start of that block.
    whole = captures["python"].read_bytes()
    total = read_memray_capture(captures["python"]).summary.records
    for fraction in (0.05, 0.5, 0.9):
        cut = tmp_path / f"cut{fraction}.bin"
        cut.write_bytes(whole[: int(len(whole) * fraction)])
        with pytest.raises(TraceError, match=(
            f"truncated or damaged memray capture: (only [0-9,]+|none) of the {total:,} records"
        )):
            read_memray_capture(cut)


@pytest.mark.parametrize("options", [(), ("--no-compress",), ("--trace-python-allocators",)])
def test_the_header_count_of_a_complete_capture_is_its_record_count(
    tmp_path: Path, options: tuple[str, ...],
) -> None:
    threads = (
        "import threading\n"
        "def work():\n    keep = [bytearray(100) for _ in range(300)]\n"
        "ts = [threading.Thread(target=work) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
    )
    capture = record(tmp_path, "threads", *options, program=PROGRAM + threads)
    summary = read_memray_capture(capture).summary
    assert summary.announced == summary.records > 0 and not summary.partial


def test_a_header_of_an_unknown_version_is_read_with_a_warning(
    captures: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pyslab.lab.trace, "_COUNT_OFFSETS", {})
    with pytest.warns(pyslab.PyslabWarning, match="cannot check that the capture is complete"):
        summary = read_memray_capture(captures["native"]).summary
    assert summary.records > 0 and summary.announced is None and not summary.partial


def test_files_that_are_not_captures_are_named(tmp_path: Path) -> None:
    fake = tmp_path / "fake.bin"
    fake.write_bytes(b"memray" + b"\x00" * 64)
    assert is_memray_capture(fake)
    with pytest.raises(TraceError, match=r"fake.bin: not a memray capture"):
        read_memray_capture(fake)
    plain = tmp_path / "plain.trace"
    write_trace([], plain)
    assert not is_memray_capture(plain)
    with pytest.raises(FileNotFoundError, match="no such capture"):
        read_memray_capture(tmp_path / "missing.bin")


def test_an_aggregated_capture_is_refused(tmp_path: Path) -> None:
    capture = record(tmp_path, "aggregated", "--aggregate", program="x = [1] * 100\n")
    with pytest.raises(TraceError, match="aggregated capture"):
        read_memray_capture(capture)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"allocators": "both"}, "'both'"), ({"max_size": 0}, "not 0"), ({"max_size": "1"}, "'1'"),
     ({"max_size": MAX_SIZE + 1}, f"at most {MAX_SIZE:,}, not {MAX_SIZE + 1}")],
)
def test_bad_capture_options_are_named(
    captures: dict[str, Path], options: dict[str, object], message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        read_memray_capture(captures["native"], **options)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_the_record_and_replay_example_runs_end_to_end(tmp_path: Path) -> None:
    program = tmp_path / "tiny.py"
    program.write_text("d = {str(i): [i] * 3 for i in range(500)}\ns = repr(d)\ndel d\n")
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(program), "--out", str(tmp_path / "out"),
         "-p", "dict-lookup", "-p", "dict-lookup+reclaim"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "python allocators" in run.stdout and "skipped" in run.stdout
    assert "dict-lookup+reclaim" in run.stdout
    events = read_trace(tmp_path / "out" / "program.trace")
    assert sum(e.op == "a" for e in events) > 1000

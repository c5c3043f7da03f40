"""``pyslab replay`` and ``pyslab trace``: plain traces and memray captures, good and bad."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyslab.cli import main
from pyslab.lab.trace import read_trace, write_trace


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_recorded_workload_replays_like_the_workload(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    trace = tmp_path / "churn.trace"
    status, out, _ = _run(capsys, "trace", "record", "churn", str(trace), "--ops", "1200",
                          "--seed", "4")
    events = read_trace(trace)
    assert status == 0 and f"wrote {len(events):,} events to {trace}" in out
    replayed, compared = tmp_path / "replay.json", tmp_path / "compare.json"
    status, out, err = _run(capsys, "replay", str(trace), "-p", "dict-lookup", "-p", "reclaim",
                            "--json", str(replayed))
    assert status == 0, err
    assert f"{trace}: pyslab trace, {len(events):,} events" in out
    assert "churn.trace" in out and "reclaim" in out
    _run(capsys, "compare", "-w", "churn", "--ops", "1200", "--seed", "4", "-p", "dict-lookup",
         "-p", "reclaim", "--json", str(compared))
    heap = ("allocs", "frees", "peak_mapped_bytes", "final_mapped_bytes", "final")
    replay_runs = json.loads(replayed.read_text())["runs"]
    compare_runs = json.loads(compared.read_text())["runs"]
    assert [[r[k] for k in heap] for r in replay_runs] == [
        [r[k] for k in heap] for r in compare_runs
    ]
    assert json.loads(replayed.read_text())["meta"]["events"] == len(events)


def test_a_bad_trace_fails_with_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    trace = tmp_path / "bad.trace"
    trace.write_text("pyslab-trace 1\na 1 8\nf 2\nend 2\n")
    status, _, err = _run(capsys, "replay", str(trace))
    assert status == 1
    assert f"pyslab replay: error: {trace}:3: free of unknown block 2 (never allocated)" in err


def test_a_truncated_trace_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "cut.trace"
    trace.write_text("pyslab-trace 1\na 1 8\na 2 8\n")
    status, _, err = _run(capsys, "replay", str(trace))
    assert status == 1 and f"{trace}:3: truncated: no 'end' line after 2 events" in err


def test_an_empty_trace_has_nothing_to_replay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    write_trace([], tmp_path / "empty.trace")
    status, _, err = _run(capsys, "replay", str(tmp_path / "empty.trace"))
    assert status == 1 and "nothing to replay" in err


def test_a_missing_trace_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = _run(capsys, "replay", str(tmp_path / "nope.trace"))
    assert status == 1 and "no such trace file" in err and "nope.trace" in err


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A memray capture of a small real Python program, with Python's allocators traced."""
    pytest.importorskip("memray")
    root = tmp_path_factory.mktemp("capture")
    program = root / "program.py"
    program.write_text(
        "import json\n"
        "rows = [{'id': i, 'name': f'row-{i}', 'tags': [i % 3, i % 5]} for i in range(800)]\n"
        "text = json.dumps(rows)\n"
        "del rows\n"
        "print(len(json.loads(text)))\n"
    )
    out = root / "capture.bin"
    subprocess.run(
        [sys.executable, "-m", "memray", "run", "--quiet", "--trace-python-allocators", "-o",
         str(out), str(program)],
        check=True, timeout=60, capture_output=True,
    )
    return out


def test_replay_reads_a_memray_capture_and_counts_what_it_used(
    capsys: pytest.CaptureFixture[str], capture: Path, tmp_path: Path,
) -> None:
    plot = tmp_path / "replay.png"
    status, out, err = _run(capsys, "replay", str(capture), "-p", "dict-lookup+reclaim",
                            "--plot", str(plot))
    assert status == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"{capture}: memray capture, python allocators: ")
    assert " used, " in first and " skipped (" in first and "-> " in first
    assert "capture.bin" in out and "dict-lookup+reclaim" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_trace_convert_writes_the_capture_as_a_plain_trace(
    capsys: pytest.CaptureFixture[str], capture: Path, tmp_path: Path,
) -> None:
    out_path = tmp_path / "converted.trace"
    status, out, err = _run(capsys, "trace", "convert", str(capture), str(out_path),
                            "--allocators", "python", "--max-size", "512")
    assert status == 0, err
    events = read_trace(out_path)
    assert f"wrote {len(events):,} events to {out_path}" in out
    assert events and max(e.size for e in events) <= 512
    # Replaying the converted trace is replaying the capture.
    status, replay_out, _ = _run(capsys, "replay", str(out_path), "-p", "dict-lookup")
    assert status == 0 and f"{len(events):,} events" in replay_out


def test_trace_convert_refuses_a_file_that_is_not_a_capture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    write_trace([], tmp_path / "plain.trace")
    status, _, err = _run(capsys, "trace", "convert", str(tmp_path / "plain.trace"),
                          str(tmp_path / "out.trace"))
    assert status == 1 and "not a memray capture" in err
    assert not (tmp_path / "out.trace").exists()

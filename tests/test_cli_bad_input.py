"""Bad input on the command line: one clear error line naming the value, a non-zero exit, and
never a traceback, a hang or a silent success.

Each test runs the real command: in-process through :func:`pyslab.cli.main`, or as
``python -m pyslab`` where a pipe, a crash or the exit status of the process matters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyslab.cli import build_parser, main
from pyslab.cli._common import MAX_OPS
from pyslab.lab.trace import MAX_ALIGNMENT, MAX_SIZE, parse_trace, read_trace


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _python(
    *args: str, timeout: float = 120, stdout: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS``; stderr captured, and stdout too unless ``stdout`` is a descriptor."""
    return subprocess.run(
        [sys.executable, *args], stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE, text=True, timeout=timeout, check=False,
    )


def _one_error(err: str, command: str) -> str:
    """The single error line of ``err``: nothing else on stderr but progress lines."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line or "Error" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"pyslab {command}: error: "), err
    return errors[0]


def _trace(tmp_path: Path, *events: str, name: str = "t.trace") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(["pyslab-trace 1", *events, f"end {len(events)}", ""]),
                    encoding="utf-8")
    return path


# --- 1. numbers in a plain trace ------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (f"a 0 8 {2**62}", f"alignment '{2**62}' is larger than the largest a trace may hold, "
                           f"{MAX_ALIGNMENT:,}"),
        (f"a 0 8 {MAX_ALIGNMENT * 2}", f"alignment '{MAX_ALIGNMENT * 2}' is larger"),
        (f"a 0 {10**12}", f"size '{10**12}' is larger than the largest a trace may hold, "
                          f"{MAX_SIZE:,}"),
        (f"a 0 {MAX_SIZE + 1}", f"size '{MAX_SIZE + 1}' is larger"),
        ("a 0 123456789012345678901234567890",
         "size '123456789012345678901234567890' is larger"),
        (f"a {2**63} 8", f"block id '{2**63}' is larger"),
    ],
)
def test_a_size_or_alignment_beyond_the_limits_is_refused_with_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, event: str, message: str,
) -> None:
    trace = _trace(tmp_path, event)
    status, out, err = _run(capsys, "replay", str(trace), "-p", "first-fit")
    assert status == 1 and out == ""
    assert _one_error(err, "replay").startswith(f"pyslab replay: error: {trace}:2: {message}")


@pytest.mark.parametrize(
    "number",
    [
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0663\u0662",  # Arabic-Indic 32: int() reads it as 32
        "\uff18",  # fullwidth 8
        "\u0968",  # Devanagari 2
        "8\u00a0",  # a no-break space glued to the number
        "+8", "8_0", "0x10", "8.0", "1e3",
    ],
)
def test_only_ascii_digits_make_a_number(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, number: str,
) -> None:
    trace = _trace(tmp_path, f"a 0 {number}")
    status, out, err = _run(capsys, "replay", str(trace), "-p", "first-fit")
    assert status == 1 and out == ""
    line = _one_error(err, "replay")
    assert line.startswith(f"pyslab replay: error: {trace}:2: expected a non-negative integer, "
                           f"found {number!r}")
    hint = "(numbers are written in ASCII digits 0-9)"
    assert line.endswith(hint) == any(not c.isascii() and c.isnumeric() for c in number)


@pytest.mark.parametrize(
    ("event", "what"), [("a 0 {n}", "size"), ("a {n} 8", "block id"), ("f {n}", "block id")],
)
def test_a_number_of_thousands_of_digits_gets_the_same_clean_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, event: str, what: str,
) -> None:
    # int() refuses more than 4,300 digits with a ValueError of its own.
    trace = _trace(tmp_path, event.format(n="9" * 5000))
    status, _, err = _run(capsys, "replay", str(trace))
    assert status == 1
    assert _one_error(err, "replay") == (
        f"pyslab replay: error: {trace}:2: {what} '{'9' * 40}'... (5,000 characters) is larger "
        f"than the largest a trace may hold, {MAX_SIZE if what == 'size' else 2**63 - 1:,}"
    )


def test_an_end_count_of_thousands_of_digits_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    trace = tmp_path / "t.trace"
    trace.write_text(f"pyslab-trace 1\na 0 8\nend {'7' * 5000}\n")
    status, _, err = _run(capsys, "replay", str(trace))
    assert status == 1
    assert f"{trace}:3: event count '7777" in _one_error(err, "replay")


def test_leading_zeros_and_the_limits_themselves_are_accepted() -> None:
    lines = ["pyslab-trace 1", f"a {'0' * 5000}1 {MAX_SIZE} {MAX_ALIGNMENT}", "a 2 0008", "end 2"]
    events = parse_trace(lines)
    assert [(e.block, e.size, e.align) for e in events] == [
        (1, MAX_SIZE, MAX_ALIGNMENT), (2, 8, None)
    ]


@pytest.mark.timeout(300)
def test_a_replay_the_machine_cannot_serve_is_one_error_line(tmp_path: Path) -> None:
    # Each block is within the limits; together they exceed any address space (128 TiB).
    trace = _trace(tmp_path, *(f"a {i} {MAX_SIZE}" for i in range(40_000)))
    run = _python("-m", "pyslab", "replay", str(trace), "-p", "dict-lookup", timeout=280)
    assert run.returncode == 1, run.stderr
    line = _one_error(run.stderr, "replay")
    assert line.startswith("pyslab replay: error: out of memory: t.trace: event ")
    assert "('a " in line and f" {MAX_SIZE}') cannot be served" in line


# --- 2. cut, damaged and unfinished memray captures -------------------------------------------

PROGRAM = (
    "import json\n"
    "rows = [{'id': i, 'name': f'row-{i}', 'tags': [i % 3, i % 5]} for i in range(1500)]\n"
    "text = json.dumps(rows)\n"
    "del rows\n"
)


def _record(out: Path, *options: str, program: str = PROGRAM) -> Path:
    subprocess.run(
        [sys.executable, "-m", "memray", "run", "--quiet", "--force",
         "--trace-python-allocators", *options, "-o", str(out), "-c", program],
        check=True, timeout=120, capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real capture, compressed (memray's default) and not."""
    pytest.importorskip("memray")
    root = tmp_path_factory.mktemp("captures")
    return {
        "compressed": _record(root / "compressed.bin"),
        "plain": _record(root / "plain.bin", "--no-compress"),
    }


def _records(capsys: pytest.CaptureFixture[str], capture: Path) -> int:
    status, _, err = _run(capsys, "trace", "convert", str(capture), "-")
    assert status == 0, err
    return int(err.split(" records", 1)[0].rsplit(" ", 1)[1].replace(",", ""))


@pytest.mark.parametrize("kind", ["compressed", "plain"])
@pytest.mark.parametrize("fraction", [0.002, 0.05, 0.3, 0.6, 0.9])
def test_a_cut_capture_is_refused_saying_how_many_records_were_read(
    capsys: pytest.CaptureFixture[str], captures: dict[str, Path], tmp_path: Path, kind: str,
    fraction: float,
) -> None:
    whole = captures[kind].read_bytes()
    total = _records(capsys, captures[kind])
    cut = tmp_path / "cut.bin"
    cut.write_bytes(whole[: int(len(whole) * fraction)])
    status, out, err = _run(capsys, "replay", str(cut), "-p", "dict-lookup")
    assert status == 1 and out == ""
    line = _one_error(err, "replay")
    assert line.startswith(f"pyslab replay: error: {cut}: truncated or damaged memray capture: ")
    assert f" the {total:,} records its header announces can be read" in line
    readable = line.split("only ", 1)[1].split(" ", 1)[0] if "only " in line else "none"
    # Asked for, the records that can be read are replayed, and said to be partial.
    status, out, err = _run(capsys, "replay", str(cut), "-p", "dict-lookup", "--accept-partial")
    if readable == "none":
        assert status == 1 and "none of the" in _one_error(err, "replay")
    elif readable == "0":
        assert status == 1 and "nothing to replay" in _one_error(err, "replay")
    else:
        assert status == 0, err
        assert line.endswith(f"(--accept-partial uses the {readable} records that can be read)")
        first = out.splitlines()[0]
        assert f"{readable} records (partial: its header announces {total:,})" in first


@pytest.mark.timeout(300)
def test_a_capture_with_flipped_bytes_is_read_whole_or_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], captures: dict[str, Path], tmp_path: Path,
) -> None:
    rng = random.Random(20)
    for kind in ("compressed", "plain"):
        whole = captures[kind].read_bytes()
        total = _records(capsys, captures[kind])
        for position in [rng.randrange(300) for _ in range(3)] + [
            rng.randrange(len(whole)) for _ in range(9)
        ]:
            damaged = bytearray(whole)
            damaged[position] ^= 1 << rng.randrange(8)
            path = tmp_path / f"{kind}-{position}.bin"
            path.write_bytes(damaged)
            # A process of its own: a crash of memray's native reader would show as a signal.
            for extra in ((), ("--accept-partial",)):
                run = _python("-m", "pyslab", "trace", "convert", str(path), "-", *extra)
                assert run.returncode in (0, 1), (kind, position, run.returncode, run.stderr)
                if run.returncode == 1:
                    line = _one_error(run.stderr, "trace")
                    assert str(path) in line and "memray capture" in line, line
                elif not extra:  # the damage did not change what can be read
                    assert f" {total:,} records" in run.stderr, (kind, position, run.stderr)
                    assert "partial" not in run.stderr


def test_a_crash_of_memrays_reader_is_one_error_line(
    capsys: pytest.CaptureFixture[str], captures: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # memray's native reader can crash on a damaged capture (a flipped byte has made it
    # segfault or abort): it runs in a child process. Here the child crashes at start-up.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    status, out, err = _run(capsys, "replay", str(captures["plain"]))
    assert status == 1 and out == ""
    assert _one_error(err, "replay") == (
        f"pyslab replay: error: {captures['plain']}: damaged memray capture: memray's reader "
        "crashed on it (SIGSEGV)"
    )


def test_an_unfinished_capture_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    pytest.importorskip("memray")
    capture = tmp_path / "killed.bin"
    program = (
        "import time\nkeep = [str(i) * 3 for i in range(20000)]\nprint('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "memray", "run", "--quiet", "--trace-python-allocators",
         "-o", str(capture), "-c", program],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)  # the recording never finishes its header
    finally:
        process.wait(timeout=60)
    status, _, err = _run(capsys, "replay", str(capture))
    assert status == 1
    line = _one_error(err, "replay")
    assert "incomplete memray capture: its recording never finished" in line
    assert " records can be read (--accept-partial uses the " in line
    status, out, err = _run(capsys, "replay", str(capture), "-p", "first-fit",
                            "--accept-partial")
    assert status == 0, err
    assert "records (partial: its recording never finished)" in out


def test_a_complete_capture_replays_as_before(
    capsys: pytest.CaptureFixture[str], captures: dict[str, Path],
) -> None:
    for capture in captures.values():
        status, out, err = _run(capsys, "replay", str(capture), "-p", "dict-lookup")
        assert status == 0, err
        assert "partial" not in out and "warning" not in err


# --- 3. output paths, checked before the work -------------------------------------------------

QUICK = ("compare", "--ops", "200", "-w", "ramp", "-p", "first-fit")


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--plot", "x.xyz", "--plot '{path}': '.xyz' is not a format it can write; use one of "),
        ("--plot", "noext", "--plot '{path}': no extension to tell the format; use one of "),
        ("--plot", "-", "--plot -: standard output takes text only; give a file name"),
    ],
)
def test_a_plot_format_that_cannot_be_written_is_a_usage_error_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, name: str, message: str,
) -> None:
    path = name if name == "-" else str(tmp_path / name)
    status, out, err = _run(capsys, *QUICK, option, path)
    assert status == 2 and out == ""
    assert _one_error(err, "compare").startswith(
        "pyslab compare: error: " + message.format(path=path)
    )
    assert "[1/1]" not in err  # refused before the first run
    assert list(tmp_path.iterdir()) == []  # and nothing written (no noext.png)


def test_plot_into_a_directory_or_a_device_writes_no_file_beside_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    directory = tmp_path / "figures"
    directory.mkdir()
    for path in (str(directory), f"{directory}/"):
        status, _, err = _run(capsys, *QUICK, "--plot", path)
        assert status == 1
        assert _one_error(err, "compare") == (
            f"pyslab compare: error: --plot {path!r} is a directory, not a file"
        )
    assert not (tmp_path / "figures.png").exists() and list(directory.iterdir()) == []
    status, _, err = _run(capsys, *QUICK, "--plot", "/dev/full")
    assert status == 2 and "'/dev/full': no extension" in _one_error(err, "compare")
    assert not Path("/dev/full.png").exists()


@pytest.mark.parametrize("option", ["--json", "--csv", "--plot"])
def test_an_output_in_a_missing_directory_fails_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str,
) -> None:
    path = tmp_path / "missing" / "out.png"
    status, _, err = _run(capsys, *QUICK, option, str(path))
    assert status == 1
    assert _one_error(err, "compare") == (
        f"pyslab compare: error: {option} '{path}': no such directory: '{path.parent}'"
    )
    assert "[1/1]" not in err
    file = tmp_path / "file"
    file.write_text("")
    status, _, err = _run(capsys, *QUICK, option, str(file / "out.png"))
    assert status == 1 and f"'{file}' is not a directory" in _one_error(err, "compare")


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_a_failed_write_is_one_error_line(
    capsys: pytest.CaptureFixture[str], option: str,
) -> None:
    status, _, err = _run(capsys, *QUICK, option, "/dev/full")
    assert status == 1
    assert _one_error(err, "compare") == (
        "pyslab compare: error: cannot write '/dev/full': No space left on device"
    )


def test_dash_writes_json_or_csv_to_stdout_and_the_table_to_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    status, out, err = _run(capsys, *QUICK, "--json", "-")
    assert status == 0, err
    data = json.loads(out)
    assert [run["workload"] for run in data["runs"]] == ["ramp"]
    assert "peak KiB" in err and "wrote" not in err
    status, out, err = _run(capsys, *QUICK, "--csv", "-", "--json", str(tmp_path / "r.json"))
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["configuration"] for row in rows] == ["first-fit"]
    assert f"wrote {tmp_path / 'r.json'}" in err
    status, out, err = _run(capsys, *QUICK, "--json", "-", "--csv", "-")
    assert status == 2 and out == ""
    assert "--json and --csv cannot both write to standard output" in _one_error(err, "compare")


def test_replay_to_stdout_keeps_stdout_for_the_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    trace = _trace(tmp_path, "a 0 8", "a 1 16", "f 0")
    status, out, err = _run(capsys, "replay", str(trace), "-p", "first-fit", "--json", "-")
    assert status == 0, err
    assert json.loads(out)["meta"]["events"] == 3
    assert f"{trace}: pyslab trace, 3 events" in err


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--png", "-"], 2, "--png -: standard output takes text only"),
        (["--png", "{tmp}/m.xyz"], 2, "'.xyz' is not a format it can write"),
        (["--png", "{tmp}"], 1, "is a directory, not a file"),
        (["--png", "{tmp}/missing/m.png"], 1, "no such directory"),
        (["--png", "/dev/full"], 2, "'/dev/full': no extension"),
        (["--dpi", "100000"], 2, "argument --dpi: '100000' is more than the largest accepted, 600"),
        (["--dpi", "1"], 2, "argument --dpi: 1 is less than the smallest accepted, 20"),
    ],
)
def test_map_refuses_a_picture_it_cannot_write_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], status: int,
    message: str,
) -> None:
    arguments = [arg.format(tmp=tmp_path) for arg in argv]
    got, out, err = _run(capsys, "map", "--ops", "300", *arguments)
    assert got == status and out == ""
    assert message in _one_error(err, "map")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--dpi", "1"], 2, "argument --dpi: 1 is less than the smallest accepted, 20"),
        (["--dpi", "5000"], 2, "argument --dpi: '5000' is more than the largest accepted, 300"),
        (["--frames", "10000000"], 2, "'10000000' is more than the largest accepted, 1,000"),
    ],
)
def test_animate_refuses_bad_picture_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], status: int,
    message: str,
) -> None:
    got, out, err = _run(capsys, "animate", str(tmp_path / "frames"), "--ops", "300", *argv)
    assert got == status and out == ""
    assert message in _one_error(err, "animate")
    assert list(tmp_path.iterdir()) == []


def test_animate_checks_its_directory_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    file = tmp_path / "file"
    file.write_text("")
    for directory, message in (
        (file, f"DIR '{file}' exists and is not a directory"),
        (file / "frames", f"DIR '{file / 'frames'}': '{file}' is not a directory"),
    ):
        status, out, err = _run(capsys, "animate", str(directory), "--ops", "300",
                                "--frames", "1")
        assert status == 1 and out == ""
        assert _one_error(err, "animate") == f"pyslab animate: error: {message}"
        assert "calls, seed" not in err  # refused before the run


def test_trace_writes_to_stdout_and_checks_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    status, out, err = _run(capsys, "trace", "record", "churn", "-", "--ops", "300")
    assert status == 0, err
    events = parse_trace(out.splitlines())
    assert f"wrote {len(events):,} events to -" in err
    status, _, err = _run(capsys, "trace", "record", "churn", "/dev/full", "--ops", "300")
    assert status == 1
    assert _one_error(err, "trace") == (
        "pyslab trace: error: cannot write '/dev/full': No space left on device"
    )
    status, _, err = _run(capsys, "trace", "record", "churn", str(tmp_path), "--ops", "300")
    assert status == 1 and "is a directory, not a file" in _one_error(err, "trace")
    write = tmp_path / "w.trace"
    assert _run(capsys, "trace", "record", "churn", str(write), "--ops", "300")[0] == 0
    assert read_trace(write)


def test_a_trace_that_is_a_directory_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    status, _, err = _run(capsys, "replay", str(tmp_path))
    assert status == 1
    assert _one_error(err, "replay") == (
        f"pyslab replay: error: trace file '{tmp_path}' is a directory"
    )


# --- 4. counts beyond what the harness can do -----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "largest"),
    [
        (["compare", "--ops", "{n}"], MAX_OPS),
        (["map", "--ops", "{n}"], MAX_OPS),
        (["animate", "frames", "--ops", "{n}"], MAX_OPS),
        (["animate", "frames", "--every", "{n}"], MAX_OPS),
        (["animate", "frames", "--frames", "{n}"], 1000),
        (["animate", "frames", "--strip-frames", "{n}"], 32),
        (["animate", "frames", "--frame-ms", "{n}"], 60_000),
        (["map", "--width", "{n}"], 1024),
        (["map", "--max-slabs", "{n}"], 1_000_000),
        (["trace", "record", "churn", "out", "--ops", "{n}"], MAX_OPS),
        (["replay", "t", "--max-size", "{n}"], MAX_SIZE),
        (["trace", "convert", "c", "out", "--max-size", "{n}"], MAX_SIZE),
    ],
)
@pytest.mark.parametrize("number", [str(10**26), "1_000_000_000_000", "9" * 5000])
def test_a_huge_count_is_refused_with_the_largest_accepted(
    capsys: pytest.CaptureFixture[str], argv: list[str], largest: int, number: str,
) -> None:
    status, out, err = _run(capsys, *(arg.format(n=number) for arg in argv))
    assert status == 2 and out == ""
    line = err.splitlines()[-1]
    assert "Traceback" not in err
    command = " ".join(argv[:2]) if argv[0] == "trace" else argv[0]
    assert line.startswith(f"pyslab {command}: error: argument ")
    shown = repr(number) if len(number) <= 40 else f"{number[:40]!r}... (5,000 characters)"
    assert line.endswith(f": {shown} is more than the largest accepted, {largest:,}")


@pytest.mark.parametrize("number", ["\u0661\u0660\u0660", "\u00b2", " 100", "1__0", "-5", "0x10"])
def test_a_count_is_written_in_ascii_digits(
    capsys: pytest.CaptureFixture[str], number: str,
) -> None:
    status, _, err = _run(capsys, "compare", "--ops", number)
    assert status == 2
    assert err.splitlines()[-1].endswith(
        f"argument --ops: expected a positive integer, not {number!r}"
    )


def test_the_largest_counts_are_accepted() -> None:
    args = build_parser().parse_args(["compare", "--ops", f"{MAX_OPS:_}"])
    assert args.ops == MAX_OPS
    args = build_parser().parse_args(["replay", "t", "--max-size", str(MAX_SIZE)])
    assert args.max_size == MAX_SIZE


# --- 5. a reader that goes away ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["map", "--ops", "300"],
        ["policies"],
        ["workloads"],
        ["compare", "--ops", "200", "-w", "ramp", "-p", "first-fit"],
        ["trace", "record", "churn", "-", "--ops", "2000"],
        ["--help"],
        ["compare", "--help"],
    ],
)
def test_a_closed_stdout_ends_the_command_quietly(argv: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        run = _python("-m", "pyslab", *argv, stdout=write)
    finally:
        os.close(write)
    # argparse swallows the failed write of its own help text, which then ends with 0.
    assert run.returncode == (0 if "--help" in argv else 1)
    assert "Traceback" not in run.stderr and "Broken pipe" not in run.stderr
    assert "error" not in run.stderr.lower()


@pytest.mark.parametrize(
    ("command", "first"),
    [
        ("map", "fragmentation-demo, 1500 calls, seed 0:"),
        # Far more than a pipe holds: the writes themselves meet the closed pipe.
        ("trace record churn - --ops 200000", "pyslab-trace 1"),
    ],
)
def test_pyslab_into_head_exits_quietly(command: str, first: str) -> None:
    run = subprocess.run(
        f"set -o pipefail; {sys.executable} -m pyslab {command} | head -1",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert run.stdout == first + "\n"
    assert "Traceback" not in run.stderr and "Broken pipe" not in run.stderr
    assert "error" not in run.stderr.lower()
    assert run.returncode in (0, 1)  # 1: the pipe closed before pyslab's last write


# --- python -m pyslab -------------------------------------------------------------------------


def test_python_m_pyslab_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    trace = _trace(tmp_path, f"a 0 8 {2**62}")
    run = _python("-m", "pyslab", "replay", str(trace))
    assert run.returncode == 1
    assert run.stderr == (
        f"pyslab replay: error: {trace}:2: alignment '{2**62}' is larger than the largest a "
        f"trace may hold, {MAX_ALIGNMENT:,}\n"
    )
    run = _python("-m", "pyslab", "compare", "--ops", str(10**26))
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (
        f"pyslab compare: error: argument --ops: '{10**26}' is more than the largest "
        f"accepted, {MAX_OPS:,}"
    )

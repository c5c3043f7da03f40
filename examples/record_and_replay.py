"""Record a real Python program's allocations with memray, then replay them through pyslab.

    python examples/record_and_replay.py [PROGRAM.py] [--out DIR] [-p CONFIG ...]

1. Runs PROGRAM (default: a small program written to DIR that builds, serialises and drops
   dicts, lists and strings) under ``memray run --trace-python-allocators``, so that the
   capture holds the Python object allocator's traffic: the small blocks a slab allocator is
   for.
2. Converts the capture into a pyslab trace (``pyslab trace convert``), saying how many
   records were used and skipped, and why.
3. Replays the capture under each configuration (``pyslab replay``) and prints the table.

Needs the ``cli`` extra (memray, rich): ``pip install -e '.[cli]'``. Exit status: that of the
first step that fails, else 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from pyslab.cli import main as pyslab

DEFAULT_PROGRAM = '''\
"""A small program with Python's usual allocation pattern: many small, short-lived objects."""
import json

records = [
    {"id": i, "name": f"user-{i}", "tags": ["a", "b", str(i % 7)], "score": i * 0.5}
    for i in range(1000)
]
text = json.dumps(records)
parsed = json.loads(text)
index = {record["name"]: record for record in parsed if record["id"] % 3}
words = sorted(set(text.split(",")), key=len)
del records, parsed, text
print(len(index), len(words))
'''


def record(program: Path, capture: Path) -> int:
    """Run ``program`` under memray, writing ``capture``; return memray's exit status."""
    command = [
        sys.executable, "-m", "memray", "run", "--quiet", "--force",
        "--trace-python-allocators", "-o", str(capture), str(program),
    ]
    print("$ python", " ".join(command[1:]), flush=True)
    return subprocess.run(command, check=False).returncode


def run(program: Path | None, out: Path, configs: list[str]) -> int:
    """Record, convert, replay. Returns the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    if program is None:
        program = out / "program.py"
        program.write_text(DEFAULT_PROGRAM, encoding="utf-8")
    capture = out / "capture.bin"
    status = record(program, capture)
    if status:
        return status
    print(f"$ pyslab trace convert {capture} {out / 'program.trace'}", flush=True)
    status = pyslab(["trace", "convert", str(capture), str(out / "program.trace")])
    if status:
        return status
    policies = [arg for config in configs for arg in ("--policy", config)]
    print("$", " ".join(["pyslab", "replay", str(capture), *policies]), flush=True)
    return pyslab(["replay", str(capture), *policies])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The example's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("program", nargs="?", type=Path, help="the program to record")
    parser.add_argument("--out", type=Path, help="where to keep the files (default: a temp dir)")
    parser.add_argument(
        "-p", "--policy", action="append", metavar="CONFIG",
        help="a configuration to replay under (repeat; default: pyslab replay's)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    if options.out is not None:
        sys.exit(run(options.program, options.out, options.policy or []))
    with tempfile.TemporaryDirectory(prefix="pyslab-record-") as temporary:
        sys.exit(run(options.program, Path(temporary), options.policy or []))

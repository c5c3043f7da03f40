"""``pyslab map``: run a workload under one configuration and draw its heap map.

The map is printed as text (a line per slab, the seed's ``[used] [free]→[free]`` diagram
compressed to one character per slot), and drawn as a picture with ``--png``. Without options:
the built-in ``fragmentation-demo`` workload, 1,500 calls, under ``first-fit``.
"""

from __future__ import annotations

import argparse
import sys

import pyslab
import pyslab.lab
import pyslab.observe
from pyslab.observe.animation import FragmentationDemo, record_frames

from ._common import (
    MAX_OPS,
    SPEC_HELP,
    CommandError,
    MissingExtra,
    Subparsers,
    UsageError,
    check_output,
    configuration,
    count,
    plot_formats,
)
from ._report import writing

DEFAULT_OPS = 1500
DEMO = FragmentationDemo.name
MIN_DPI = 20
"""The fewest pixels per inch of a picture: below, matplotlib cannot size the fonts."""
MAX_DPI = 600
"""The most pixels per inch of ``map --png``: 6,600 pixels across (the map is 11 inches)."""
MAX_WIDTH = 1024
"""The most characters per slab line of the text map."""
MAX_SLABS = 1_000_000
"""The most slab lines per class ``--max-slabs`` takes (more than any heap here has)."""


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``map`` and its options."""
    parser = subparsers.add_parser(
        "map",
        help="run a workload and print (or draw) the heap map it leaves",
        description="Run a workload on a fresh allocator under one policy configuration, then "
        "print its heap map: a line per slab, a character per slot (live, free on the free "
        "list, never carved), grouped by size class. --png also draws it as a picture.",
    )
    parser.add_argument(
        "-p", "--policy", type=configuration, default="first-fit", metavar="CONFIG",
        help=f"the policy configuration: {SPEC_HELP} (default first-fit)",
    )
    add_run_options(parser, DEFAULT_OPS)
    parser.add_argument("--free-list", action="store_true",
                        help="show each slab's free list in order")
    parser.add_argument("--width", type=count(MAX_WIDTH), default=64, metavar="N",
                        help=f"most characters per slab (default 64; 8 to {MAX_WIDTH:,})")
    parser.add_argument("--max-slabs", type=count(MAX_SLABS), default=16, metavar="N",
                        help="most slab lines per class; the rest are summarised (default 16; "
                        "at least 2)")
    parser.add_argument("--ascii", action="store_true", help="use ASCII characters only")
    parser.add_argument("--png", metavar="FILE",
                        help="also draw the map into FILE (the format from the extension: "
                        ".png, .svg, .pdf...)")
    parser.add_argument("--dpi", type=count(MAX_DPI, MIN_DPI), default=100, metavar="N",
                        help=f"pixels per inch of --png (default 100; {MIN_DPI} to {MAX_DPI})")
    return parser


def add_run_options(parser: argparse.ArgumentParser, default_ops: int) -> None:
    """Add ``-w/--workload``, ``--ops`` and ``--seed`` (``map`` and ``animate`` share them)."""
    parser.add_argument(
        "-w", "--workload", type=workload_or_demo, default=DEMO, metavar="W",
        help=f"a registered workload, or {DEMO} (the default; see 'pyslab workloads')",
    )
    parser.add_argument(
        "--ops", type=count(MAX_OPS), default=default_ops, metavar="N",
        help=f"calls the workload makes (default {default_ops:,}; at most {MAX_OPS:,})",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")


def workload_or_demo(text: str) -> str:
    """A registered workload name, or the built-in demo."""
    if text == DEMO:
        return text
    try:
        pyslab.lab.make_workload(text)
    except pyslab.lab.WorkloadError as error:
        raise argparse.ArgumentTypeError(f"{error} (or {DEMO})") from None
    return text


def make(name: str) -> pyslab.lab.Workload:
    """The workload ``name`` names (the demo, or a registered one)."""
    return FragmentationDemo() if name == DEMO else pyslab.lab.make_workload(name)


def run(args: argparse.Namespace) -> int:
    """Run the workload, print the map, draw it on request. Returns 0.

    Raises: UsageError (a bad option), CommandError (``--png`` cannot be written),
        MissingExtra: the main function reports each.
    """
    if args.width < 8:
        raise UsageError(f"--width must be at least 8, not {args.width}")
    if args.max_slabs < 2:
        raise UsageError(f"--max-slabs must be at least 2, not {args.max_slabs}")
    if args.png:
        _check_viz()
        check_output(args.png, "--png", plot_formats(), text=False)
    # One frame, at the end (a threaded workload may make a few calls more than --ops).
    frame = record_frames(
        make(args.workload), [args.policy], ops=args.ops, seed=args.seed, every=args.ops + 1,
    )[-1]
    heap = frame.maps[0]
    print(f"{args.workload}, {frame.calls} calls, seed {args.seed}:")
    print(heap.to_text(width=args.width, max_slabs=args.max_slabs, free_list=args.free_list,
                       ascii=args.ascii))
    if args.png:
        with writing(args.png):
            try:
                path = pyslab.observe.render_map(heap, args.png, show_free_list=args.free_list,
                                                 dpi=args.dpi)
            except (RuntimeError, ValueError) as error:  # matplotlib cannot draw or write it
                raise CommandError(f"cannot write {args.png!r}: {error}") from None
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _check_viz() -> None:
    """Fail before any work when matplotlib or Pillow is missing. Raises: MissingExtra."""
    try:
        import matplotlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as error:
        missing = (error.name or "a library").split(".")[0]
        raise MissingExtra(f"pictures need {missing}: pip install 'pyslab-alloc[viz]'") from None

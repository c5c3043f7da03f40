"""``pyslab animate``: watch policy configurations diverge through one workload.

Each configuration runs the same workload (same calls, same seed) on a fresh allocator; a heap
map is taken at intervals, and the maps of every configuration are drawn side by side into
``DIR/frame_0001.png``..., an animated ``DIR/heap.gif`` and ``DIR/strip.png`` (a few moments,
stacked). Without options: ``first-fit`` against ``fullest-first+reclaim`` on the built-in
``fragmentation-demo`` workload, 6,000 calls, 30 frames.
"""

from __future__ import annotations

import argparse
import sys

import pyslab
import pyslab.observe
from pyslab.observe.animation import animate, default_configurations

from ._common import (
    MAX_OPS,
    SPEC_HELP,
    Subparsers,
    check_directory,
    configuration,
    count,
    unique,
)
from ._report import writing
from .map_command import MIN_DPI, _check_viz, add_run_options, make

DEFAULT_OPS = 6000
DEFAULT_FRAMES = 30
MAX_FRAMES = 1000
"""The most frames: each is a picture drawn in about a second, and the GIF holds them all."""
MAX_STRIP_FRAMES = 32
"""The most frames stacked in strip.png."""
MAX_FRAME_MS = 60_000
"""The longest a GIF frame may be shown: a minute (the last frame is shown four times as long)."""
MAX_DPI = 300
"""The most pixels per inch of the frames: 3,300 pixels per column, every frame kept in memory
for the GIF."""


def add_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add ``animate`` and its options."""
    parser = subparsers.add_parser(
        "animate",
        help="draw heap maps of configurations side by side through a workload (PNGs, GIF)",
        description="Run one workload under two or more policy configurations with the same "
        "seed, take a heap map of each at intervals, and draw them side by side: a PNG per "
        "frame, an animated GIF and a strip of a few frames, stacked, in DIR.",
    )
    parser.add_argument("dir", metavar="DIR", help="directory for the frames (created)")
    parser.add_argument(
        "-p", "--policy", action="append", type=configuration, metavar="CONFIG",
        help=f"a policy configuration: {SPEC_HELP}; one column each (repeat; default: "
        "first-fit and fullest-first+reclaim when registered)",
    )
    add_run_options(parser, DEFAULT_OPS)
    parser.add_argument(
        "--frames", type=count(MAX_FRAMES), default=DEFAULT_FRAMES, metavar="N",
        help=f"frames to take, one every OPS/N calls (default {DEFAULT_FRAMES}; at most "
        f"{MAX_FRAMES:,})",
    )
    parser.add_argument("--every", type=count(MAX_OPS), metavar="N",
                        help="take a frame every N calls instead")
    parser.add_argument("--no-gif", action="store_true", help="do not write heap.gif")
    parser.add_argument("--no-strip", action="store_true", help="do not write strip.png")
    parser.add_argument("--strip-frames", type=count(MAX_STRIP_FRAMES), default=4, metavar="N",
                        help=f"frames in strip.png (default 4; at most {MAX_STRIP_FRAMES})")
    parser.add_argument("--free-list", action="store_true",
                        help="shade free slots by their place in the free list")
    parser.add_argument("--frame-ms", type=count(MAX_FRAME_MS), default=250, metavar="MS",
                        help=f"milliseconds per GIF frame (default 250; at most "
                        f"{MAX_FRAME_MS:,})")
    parser.add_argument("--dpi", type=count(MAX_DPI, MIN_DPI), default=60, metavar="N",
                        help="pixels per inch (each column is 11 inches wide; default 60; "
                        f"{MIN_DPI} to {MAX_DPI})")
    return parser


def run(args: argparse.Namespace) -> int:
    """Record and draw the frames, then say what was written. Returns 0.

    Raises: CommandError (DIR cannot be written), MissingExtra, OSError: the main function
        reports each.
    """
    _check_viz()
    check_directory(args.dir, "DIR")
    configs = tuple(unique(args.policy or list(default_configurations())))
    print(f"{args.workload}, {args.ops:,} calls, seed {args.seed}: "
          f"{' vs '.join(configs)}", file=sys.stderr)
    with writing(args.dir):
        result = animate(
            args.dir, configs, make(args.workload), ops=args.ops, seed=args.seed,
            frames=args.frames, every=args.every, gif=not args.no_gif, strip=not args.no_strip,
            strip_frames=args.strip_frames, show_free_list=args.free_list,
            frame_ms=args.frame_ms, dpi=args.dpi,
        )
    width = max(map(len, configs))
    for config, heap in zip(configs, result.final, strict=True):
        print(f"{config:<{width}}  {len(heap.slabs):>5} slabs  "
              f"{heap.mapped_bytes // 1024:>7} KiB mapped  {heap.used:>7} live blocks  "
              f"{_percent(heap)} of slots live")
    count = len(result.frames)
    written = [f"{count} frame{'s' * (count != 1)} ({result.frames[0].name}...)"]
    written += [p.name for p in (result.gif, result.strip) if p is not None]
    print(f"wrote {', '.join(written)} in {args.dir}", file=sys.stderr)
    return 0


def _percent(heap: pyslab.observe.HeapMap) -> str:
    return f"{100 * heap.used / heap.capacity:5.1f}%" if heap.capacity else "    -"

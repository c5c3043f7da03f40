"""Watch policies diverge: heap maps of several configurations through one workload.

:func:`record_frames` runs a :class:`~pyslab.lab.workload.Workload` once per configuration, each on
a fresh :class:`~pyslab.SlabAllocator`, with the same ``ops`` and ``seed`` (so the same
sequence of calls), and takes a :class:`~pyslab.observe.HeapMap` every ``every`` calls.
:func:`animate` draws those frames side by side (one column per configuration, on one shared
layout) into a directory of PNG files, an animated GIF and a strip of a few moments, stacked.

The example of the README: ``first-fit`` against ``fullest-first+reclaim`` on
:class:`FragmentationDemo` (built in here; a registered ``fragmentation`` workload is used
instead when one exists). The registered ``adversary`` workload is no example for pictures of
divergence: it leaves every slab exactly half full, so every policy ends with the same heap.

Pictures need the ``viz`` extra (matplotlib and Pillow), imported when first drawn.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar, Final

import pyslab
import pyslab.observe
from pyslab.core.allocator import SlabAllocator
from pyslab.lab.workload import (
    UnknownWorkloadError,
    Workload,
    WorkloadError,
    WorkloadHeap,
    make_workload,
)
from pyslab.policy import policies

from .heapmap import HeapMap

__all__ = [
    "Animation",
    "FragmentationDemo",
    "Frame",
    "animate",
    "default_configurations",
    "fragmentation_workload",
    "record_frames",
]

_DEMO_SIZES: Final = (24, 40, 48, 64, 200, 256)  # 32-, 64- and 256-byte classes


class FragmentationDemo(Workload):
    """Grow a heap, free every other block, then churn while the live set shrinks.

    1. 30% of ``ops``: allocate blocks of sizes drawn from 24..256 bytes (three classes).
    2. Free every other block, in allocation order: every slab is left about half full, the
       worst case for a policy that never packs.
    3. The rest: each call frees a random live block (60%) or allocates a new one (40%), so
       the live set shrinks to about a quarter of what phase 2 left. Where the new blocks go
       is the policy's choice; which slabs drain, and can be given back, follows from it.

    Deterministic by ``seed``; single-threaded; leaves the surviving blocks live.
    """

    name: ClassVar[str] = "fragmentation-demo"
    description: ClassVar[str] = (
        "grow, free every other block, then churn while the live set shrinks (heap pictures)"
    )

    def run(self, heap: WorkloadHeap, ops: int, seed: int) -> None:
        """Make ``ops`` calls on ``heap`` (phases in the class docstring). Complexity: O(ops)."""
        rng = random.Random(seed)
        grow = max(2, int(ops * 0.3))
        blocks = [heap.alloc(rng.choice(_DEMO_SIZES)) for _ in range(grow)]
        calls = grow
        for block in blocks[1::2]:
            if calls >= ops:
                return
            heap.free(block)
            calls += 1
        live = blocks[0::2]
        while calls < ops and live:
            if rng.random() < 0.6:
                # Swap-remove: O(1), and the order of ``live`` stays a function of the seed.
                index = rng.randrange(len(live))
                live[index], live[-1] = live[-1], live[index]
                heap.free(live.pop())
            else:
                live.append(heap.alloc(rng.choice(_DEMO_SIZES)))
            calls += 1


def fragmentation_workload() -> Workload:
    """The registered ``fragmentation`` workload, or :class:`FragmentationDemo` when none is.

    Raises:
        WorkloadError: a ``fragmentation`` plugin is registered but cannot be built.
    """
    try:
        return make_workload("fragmentation")
    except UnknownWorkloadError:
        return FragmentationDemo()


def default_configurations() -> tuple[str, str]:
    """``first-fit`` and the best packing configuration registered.

    ``fullest-first+reclaim`` when ``fullest-first`` is registered, else ``reclaim`` (which
    still gives empty slabs back), so that the default comparison always runs.
    """
    registered = policies()
    if "fullest-first" in registered and "reclaim" in registered:
        return ("first-fit", "fullest-first+reclaim")
    return ("first-fit", "reclaim" if "reclaim" in registered else "first-fit")


@dataclass(frozen=True)
class Frame:
    """The heap of every configuration after ``calls`` calls of the workload."""

    calls: int
    """Calls made so far (allocations, frees and reallocs alike)."""
    maps: tuple[HeapMap, ...]
    """One snapshot per configuration, in the order the configurations were given."""


@dataclass(frozen=True)
class Animation:
    """What :func:`animate` wrote."""

    frames: tuple[Path, ...]
    """One PNG per frame, in order: ``frame_0001.png``..."""
    gif: Path | None
    """The animated GIF (``heap.gif``), or None when not asked for."""
    strip: Path | None
    """A few frames stacked top to bottom (``strip.png``), or None when not asked for."""
    configurations: tuple[str, ...]
    """The configurations, one column each, left to right."""
    final: tuple[HeapMap, ...]
    """The last snapshot of each configuration."""


class _FramingHeap:
    """A :class:`WorkloadHeap` over a real allocator that takes a heap map every ``every`` calls.

    Block ids map to real addresses; calls are counted under a lock, so a threaded workload's
    frames are still taken every ``every`` calls (each map is consistent: ``heap_map`` holds the
    allocator's lock).
    """

    def __init__(self, allocator: SlabAllocator, every: int) -> None:
        self.allocator = allocator
        self.every = every
        self.calls = 0
        self.frames: list[tuple[int, HeapMap]] = []
        self._blocks: dict[int, int] = {}  # block id -> address, for every live block
        self._next = 0
        self._lock = threading.Lock()

    def alloc(self, size: int, align: int | None = None) -> int:
        address = self.allocator.alloc(size) if align is None else self.allocator.alloc(
            size, align)
        with self._lock:
            block = self._next
            self._next = block + 1
            self._blocks[block] = address
            self._count()
            return block

    def free(self, block: int) -> None:
        with self._lock:
            address = self._blocks.pop(block, None)
            if address is None:
                raise WorkloadError(f"free of block {block!r}, which is not live")
        self.allocator.free(address)
        with self._lock:
            self._count()

    def realloc(self, block: int, size: int, align: int | None = None) -> None:
        with self._lock:
            if block not in self._blocks:
                raise WorkloadError(f"realloc of block {block!r}, which is not live")
            address = self._blocks[block]
        moved = self.allocator.realloc(address, size) if align is None else (
            self.allocator.realloc(address, size, align))
        with self._lock:
            self._blocks[block] = moved
            self._count()

    def _count(self) -> None:
        # Lock held. A frame is the state right after every ``every``-th call.
        self.calls += 1
        if self.calls % self.every == 0:
            self.frames.append((self.calls, pyslab.observe.heap_map(self.allocator)))


def record_frames(
    workload: Workload,
    configurations: Sequence[str],
    *,
    ops: int = 6000,
    seed: int = 0,
    every: int | None = None,
    frames: int = 40,
) -> list[Frame]:
    """Run ``workload`` under each configuration and take its heap map at intervals.

    Each configuration gets a fresh allocator (closed afterwards) and the same ``ops`` and
    ``seed``. A map is taken after every ``every`` calls, and once more at the end.

    Args:
        workload: the program to run (:func:`fragmentation_workload`, ``make_workload(name)``).
        configurations: policy specs such as ``"first-fit"`` or ``"fullest-first+reclaim"``.
        ops: calls the workload makes (about: its contract).
        seed: the workload's seed, the same for every configuration.
        every: calls between frames; default ``ops // frames``.
        frames: the frames wanted when ``every`` is not given.

    Returns:
        Frames in call order; when one configuration yields fewer (a threaded workload may
        make a few calls more or less), its last map repeats.

    Raises:
        TypeError, ValueError: ``ops``, ``every``, ``frames`` or ``seed`` is not a proper int,
            or ``configurations`` is empty (the message names the value).
        UnknownPolicyError, PolicyError: a configuration cannot be built.
        WorkloadError: the workload misused its heap.
        CorruptionError: an allocator invariant broke (``validate()`` runs after each run).

    Complexity: the workload's, plus O(slots) per frame.
    """
    _check_int("ops", ops, 1)
    _check_int("frames", frames, 1)
    if type(seed) is not int:
        raise TypeError(f"seed must be an int, not {seed!r}")
    if every is None:
        every = max(1, ops // frames)
    _check_int("every", every, 1)
    if isinstance(configurations, str) or not configurations:
        raise ValueError(
            f"configurations must be a non-empty sequence of policy specs, not {configurations!r}"
        )
    runs: list[list[tuple[int, HeapMap]]] = []
    for configuration in configurations:
        with SlabAllocator(policy=configuration) as allocator:
            heap = _FramingHeap(allocator, every)
            workload.run(heap, ops, seed)
            allocator.validate()
            if not heap.frames or heap.frames[-1][0] != heap.calls:
                heap.frames.append((heap.calls, pyslab.observe.heap_map(allocator)))
            runs.append(heap.frames)
    length = max(len(run) for run in runs)
    return [
        Frame(
            calls=max(run[min(i, len(run) - 1)][0] for run in runs),
            maps=tuple(run[min(i, len(run) - 1)][1] for run in runs),
        )
        for i in range(length)
    ]


def animate(
    out_dir: str | os.PathLike[str],
    configurations: Sequence[str] | None = None,
    workload: Workload | None = None,
    *,
    ops: int = 6000,
    seed: int = 0,
    frames: int = 40,
    every: int | None = None,
    gif: bool = True,
    strip: bool = True,
    strip_frames: int = 4,
    show_free_list: bool = False,
    frame_ms: int = 250,
    max_rows: int = 256,
    dpi: int = 60,
) -> Animation:
    """Write the heap maps of each configuration through ``workload`` as frames, GIF and strip.

    Every frame shows the configurations side by side on one layout shared by all frames, so
    that the images have one size and a cell keeps its place from frame to frame.

    Args:
        out_dir: directory for ``frame_0001.png``..., ``heap.gif`` and ``strip.png``; created
            if missing. Files of those names already there are replaced, and frames numbered
            past this run's last are deleted (they belong to an earlier run).
        configurations: policy specs, one column each; default :func:`default_configurations`.
        workload: default :func:`fragmentation_workload`.
        ops, seed, frames, every: as :func:`record_frames`.
        gif: write the animated GIF (each frame shown ``frame_ms``, the last one 4 times as
            long; it loops).
        strip: write ``strip_frames`` evenly spaced frames (the last included) stacked.
        show_free_list, max_rows: as :func:`pyslab.observe.render_map`.
        dpi: pixels per inch of the frames (each column is 11 inches wide).

    Raises:
        TypeError, ValueError: an argument is out of range (the message names it).
        ImportError: matplotlib or Pillow is missing (install ``pyslab-alloc[viz]``).
        OSError: ``out_dir`` cannot be created or written.
        And what :func:`record_frames` raises.

    Complexity: the workload's per configuration, plus one picture per frame (the pictures
    dominate: about a second each).
    """
    from .render import render_comparison

    _check_int("strip_frames", strip_frames, 1)
    _check_int("frame_ms", frame_ms, 1)
    configurations = tuple(configurations or default_configurations())
    recorded = record_frames(
        workload or fragmentation_workload(), configurations, ops=ops, seed=seed,
        every=every, frames=frames,
    )
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # Each column's layout comes from all its frames: one size for every image, one row per
    # slab throughout, and blank rows where slabs were released.
    history = [[frame.maps[c] for frame in recorded] for c in range(len(configurations))]
    total = recorded[-1].calls
    paths = []
    for number, frame in enumerate(recorded, start=1):
        titles = [
            f"{configuration}  ·  call {frame.calls}/{total}  ·  {len(heap.slabs)} slabs, "
            f"{heap.mapped_bytes // 1024} KiB, {heap.used} live"
            for configuration, heap in zip(configurations, frame.maps, strict=True)
        ]
        path = directory / f"frame_{number:04d}.png"
        render_comparison(frame.maps, path, show_free_list, titles=titles, max_rows=max_rows,
                          dpi=dpi, history=history)
        paths.append(path)
    for stale in directory.glob("frame_[0-9][0-9][0-9][0-9].png"):
        # Frames of an earlier, longer run would otherwise pass for frames of this one.
        if int(stale.stem[6:]) > len(paths):
            stale.unlink()
    gif_path = _write_gif(paths, directory / "heap.gif", frame_ms) if gif else None
    strip_path = _write_strip(paths, directory / "strip.png", strip_frames) if strip else None
    return Animation(tuple(paths), gif_path, strip_path, configurations, recorded[-1].maps)


def _write_gif(frames: Sequence[Path], path: Path, frame_ms: int) -> Path:
    Image = _pillow()
    images = [Image.open(frame).convert("RGB") for frame in frames]
    # One palette for every frame, made from the first and last (between them they hold every
    # colour the pictures use): with a shared palette the GIF stores only what changed.
    first, last = images[0], images[-1]
    reference = Image.new("RGB", (first.width, first.height + last.height), "white")
    reference.paste(first, (0, 0))
    reference.paste(last, (0, first.height))
    palette = reference.quantize(colors=64)
    shared = [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in images]
    durations = [frame_ms] * (len(shared) - 1) + [frame_ms * 4]
    shared[0].save(path, save_all=True, append_images=shared[1:], duration=durations, loop=0)
    return path


def _write_strip(frames: Sequence[Path], path: Path, count: int) -> Path:
    Image = _pillow()
    count = min(count, len(frames))
    # Evenly spaced from the first frame's successor to the last, the last always included.
    picks = sorted({math.ceil((i + 1) * len(frames) / count) - 1 for i in range(count)})
    images = [Image.open(frames[i]).convert("RGB") for i in picks]
    width = max(image.width for image in images)
    strip = Image.new("RGB", (width, sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        strip.paste(image, (0, top))
        top += image.height
    strip.save(path)
    return path


def _pillow() -> ModuleType:
    """``PIL.Image``, imported on first use (never with pyslab)."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pyslab's animations need Pillow: pip install 'pyslab-alloc[viz]'"
        ) from exc
    return Image


def _check_int(name: str, value: object, least: int) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, not {value}")

"""Pictures of the heap: render_map, render_comparison and animate write valid images."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

import pyslab
import pyslab.lab
import pyslab.observe
from pyslab.observe.animation import FragmentationDemo, record_frames
from pyslab.observe.render import COLORS, render_comparison

Image = pytest.importorskip("PIL.Image", reason="the viz extra (Pillow) is not installed")
pytest.importorskip("matplotlib", reason="the viz extra (matplotlib) is not installed")


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _rgb(color: str) -> tuple[int, int, int]:
    return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))


def _colors_in(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return {color for _, color in rgb.getcolors(maxcolors=1 << 20) or []}


def _fragmented(allocator: pyslab.SlabAllocator, blocks: int = 300) -> list[int]:
    addresses = [allocator.alloc(size) for size in [24, 64, 200, 1000] * (blocks // 4)]
    for address in addresses[1::2]:
        allocator.free(address)
    return addresses[0::2]


def test_render_map_writes_a_png_with_every_slot_state_in_its_colour(tmp_path: Path) -> None:
    with pyslab.SlabAllocator() as allocator:
        _fragmented(allocator)
        heap = pyslab.observe.heap_map(allocator)
        allocator.validate()
    path = pyslab.observe.render_map(heap, tmp_path / "heap.png", dpi=50)
    assert path == tmp_path / "heap.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode in {"RGB", "RGBA"}
        assert image.width == 11 * 50
        assert 200 < image.height < 40 * 50
    colors = _colors_in(path)
    for state in pyslab.observe.SlotState:
        assert _rgb(COLORS[state]) in colors, state


def test_the_free_list_order_is_drawn_on_request(tmp_path: Path) -> None:
    with pyslab.SlabAllocator() as allocator:
        blocks = [allocator.alloc(1024) for _ in range(8)]
        for address in blocks[::2]:
            allocator.free(address)
        heap = pyslab.observe.heap_map(allocator)
        allocator.validate()
    plain = pyslab.observe.render_map(heap, tmp_path / "plain.png", dpi=40)
    ordered = pyslab.observe.render_map(heap, tmp_path / "ordered.png", show_free_list=True, dpi=40)
    # The list's head is darkest: that shade appears only when the order is drawn.
    head = _rgb("#b34700")
    assert head not in _colors_in(plain)
    assert head in _colors_in(ordered)


def test_thousands_of_slabs_become_occupancy_bars_of_bounded_size(tmp_path: Path) -> None:
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        blocks = [allocator.alloc(1024) for _ in range(4 * 2500)]  # 2,500 slabs
        for address in blocks[::3]:
            allocator.free(address)
        heap = pyslab.observe.heap_map(allocator)
        allocator.validate()
    assert len(heap.slabs) == 2500
    path = pyslab.observe.render_map(heap, tmp_path / "many.png", dpi=40)
    with Image.open(path) as image:
        assert image.width == 11 * 40
        assert image.height < 6 * 40  # one bar panel, not 2,500 rows
    assert _rgb(COLORS[pyslab.observe.SlotState.LIVE]) in _colors_in(path)


def test_a_series_with_history_keeps_one_image_size(tmp_path: Path) -> None:
    frames = record_frames(FragmentationDemo(), ["first-fit", "reclaim"], ops=1200, frames=2)
    assert len(frames) == 2
    history = [[frame.maps[c] for frame in frames] for c in range(2)]
    sizes = set()
    for number, frame in enumerate(frames):
        path = render_comparison(frame.maps, tmp_path / f"f{number}.png", history=history,
                                 dpi=30)
        with Image.open(path) as image:
            sizes.add(image.size)
    assert len(sizes) == 1
    width, _ = sizes.pop()
    assert width == 2 * 11 * 30


def test_svg_and_pdf_are_written_too(tmp_path: Path) -> None:
    with pyslab.SlabAllocator() as allocator:
        allocator.alloc(64)
        heap = pyslab.observe.heap_map(allocator)
    svg = pyslab.observe.render_map(heap, tmp_path / "heap.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    assert pyslab.observe.render_map(heap, tmp_path / "heap.pdf").read_bytes().startswith(b"%PDF")


def test_bad_arguments_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pyslab.SlabAllocator() as allocator:
        allocator.alloc(64)
        heap = pyslab.observe.heap_map(allocator)
    with pytest.raises(TypeError, match="HeapMap"):
        pyslab.observe.render_map(allocator.stats(), tmp_path / "x.png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'xyz'"):
        pyslab.observe.render_map(heap, tmp_path / "heap.xyz")
    with pytest.raises(ValueError, match="dpi must be positive, not 0"):
        pyslab.observe.render_map(heap, tmp_path / "heap.png", dpi=0)
    with pytest.raises(ValueError, match="max_rows must be positive, not -1"):
        pyslab.observe.render_map(heap, tmp_path / "heap.png", max_rows=-1)
    with pyslab.SlabAllocator(size_classes=(16, 32)) as other:
        other_heap = pyslab.observe.heap_map(other)
    with pytest.raises(ValueError, match="different layouts"):
        render_comparison([heap, other_heap], tmp_path / "two.png")
    assert list(tmp_path.iterdir()) == []


# --- animation -------------------------------------------------------------------------------


def test_record_frames_runs_the_same_calls_under_each_configuration() -> None:
    frames = record_frames(FragmentationDemo(), ["first-fit", "fullest-first+reclaim"],
                           ops=2000, every=500, seed=3)
    assert [frame.calls for frame in frames] == [500, 1000, 1500, 2000]
    for frame in frames:
        first_fit, packed = frame.maps
        assert first_fit.used == packed.used  # same calls, so the same live blocks
        assert first_fit.policy == "first-fit" and packed.policy == "fullest-first+reclaim"
    # the growth phase is identical; by the end reclamation has given slabs back
    assert len(frames[0].maps[0].slabs) == len(frames[0].maps[1].slabs)
    assert len(frames[-1].maps[1].slabs) < len(frames[-1].maps[0].slabs)
    again = record_frames(FragmentationDemo(), ["first-fit"], ops=2000, every=500, seed=3)
    assert [[s.slots for s in f.maps[0].slabs] for f in again] == [
        [s.slots for s in f.maps[0].slabs] for f in frames
    ]


def test_record_frames_drives_reallocs_and_refuses_bad_arguments() -> None:
    class Grow(pyslab.lab.Workload):
        name = "grow"

        def run(self, heap: pyslab.lab.WorkloadHeap, ops: int, seed: int) -> None:
            block = heap.alloc(8)
            for size in range(16, 16 * ops, 16):
                heap.realloc(block, size)

    frames = record_frames(Grow(), ["first-fit"], ops=20, every=5)
    assert [frame.calls for frame in frames] == [5, 10, 15, 20]  # 1 alloc + 19 reallocs
    final = frames[-1].maps[0]
    assert final.used == 1 and final.size_class(512).used == 1  # grown to 304 bytes
    with pytest.raises(ValueError, match="every must be at least 1, not 0"):
        record_frames(Grow(), ["first-fit"], ops=20, every=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        record_frames(Grow(), "first-fit", ops=20)
    with pytest.raises(pyslab.UnknownPolicyError, match="no-such-policy"):
        record_frames(Grow(), ["no-such-policy"], ops=20)


def test_animate_writes_frames_a_looping_gif_and_a_strip(tmp_path: Path) -> None:
    (tmp_path / "frame_0009.png").write_bytes(b"left over from a longer run")
    result = pyslab.observe.animate(tmp_path, ["first-fit", "reclaim"], ops=1500, frames=2, dpi=30,
                            strip_frames=2)
    assert [p.name for p in result.frames] == ["frame_0001.png", "frame_0002.png"]
    assert not (tmp_path / "frame_0009.png").exists()
    assert result.gif is not None and result.strip is not None
    with Image.open(result.frames[0]) as first:
        frame_size = first.size
    with Image.open(result.gif) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2 and gif.is_animated
        assert gif.size == frame_size
        assert gif.info.get("loop") == 0
    with Image.open(result.strip) as strip:
        assert strip.size == (frame_size[0], 2 * frame_size[1])
    assert result.configurations == ("first-fit", "reclaim")
    assert [m.policy for m in result.final] == ["first-fit", "reclaim"]


# --- the example and the command line ----------------------------------------------------------


def test_the_example_prints_the_map_and_writes_its_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = runpy.run_path(str(EXAMPLES / "heap_pictures.py"))
    heap = namespace["main"](tmp_path / "example.png")
    assert isinstance(heap, pyslab.observe.HeapMap) and heap.used == 66
    out = capsys.readouterr().out
    assert "1024-byte class: 8 slabs, 16/32 live (50%)" in out
    with Image.open(tmp_path / "example.png") as image:
        assert image.format == "PNG" and image.width == 1100


def test_pyslab_map_prints_the_text_map_and_draws_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyslab.cli import main

    png = tmp_path / "map.png"
    status = main(["map", "--ops", "300", "-p", "reclaim", "--ascii", "--png", str(png),
                   "--dpi", "30"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.startswith("fragmentation-demo, 300 calls, seed 0:\nheap map: policy "
                                   "reclaim")
    assert captured.out.isascii()
    assert f"wrote {png}" in captured.err
    with Image.open(png) as image:
        assert image.width == 11 * 30
    assert main(["map", "--width", "4"]) == 2
    assert "--width must be at least 8, not 4" in capsys.readouterr().err
    assert main(["map", "-w", "no-such-workload"]) == 2


def test_pyslab_animate_writes_the_frames_and_reports_each_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyslab.cli import main

    status = main(["animate", str(tmp_path), "-p", "first-fit", "-p", "reclaim", "--ops",
                   "800", "--frames", "2", "--dpi", "25", "--no-strip"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert [line.split()[0] for line in lines] == ["first-fit", "reclaim"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frame_0001.png", "frame_0002.png", "heap.gif"]
    with Image.open(tmp_path / "heap.gif") as gif:
        assert gif.n_frames == 2

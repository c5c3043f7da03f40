"""Look at a heap: print its map as text, then draw it with the free-list order shown.

Allocates blocks of five sizes, frees every other one and allocates a few more (which reuse the
heads of the free lists), then prints ``pyslab.observe.heap_map(allocator)`` and writes the picture.

Run: python examples/heap_pictures.py [OUT.png]      (needs: pip install 'pyslab-alloc[viz]')
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pyslab
import pyslab.observe


def build(allocator: pyslab.SlabAllocator, seed: int = 1) -> list[int]:
    """A small fragmented heap: return the addresses still live."""
    rng = random.Random(seed)
    blocks = [allocator.alloc(rng.choice([8, 24, 64, 200, 1000])) for _ in range(120)]
    for address in blocks[1::2]:
        allocator.free(address)
    live = blocks[0::2]
    live += [allocator.alloc(rng.choice([64, 200, 1000])) for _ in range(6)]
    return live


def main(out: Path) -> pyslab.observe.HeapMap:
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        live = build(allocator)
        heap = pyslab.observe.heap_map(allocator)
        allocator.validate()
        for address in live:
            allocator.free(address)
    print(heap.to_text(free_list=True, max_slabs=6))
    path = pyslab.observe.render_map(heap, out, show_free_list=True,
                             title=f"{len(live)} live blocks after freeing every other one")
    print(f"\nwrote {path}")
    return heap


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "heap_map.png"))

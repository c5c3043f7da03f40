"""``coloring``: slab coloring, so that equal slot indexes of different slabs use other cache sets.

Anchor: Bonwick (1994), "The Slab Allocator: An Object-Caching Kernel Memory Allocator", §4.1.
"""

from __future__ import annotations

import math

from pyslab import Policy
from pyslab.core import SizeClass
from pyslab.policy import Heap


def _check_cache_line(cache_line: object) -> None:
    if type(cache_line) is not int:
        raise TypeError(f"cache_line must be an int, not {cache_line!r}")
    if cache_line <= 0 or cache_line & (cache_line - 1):
        raise ValueError(f"cache_line must be a positive power of two, not {cache_line}")


def colors(size_class: SizeClass, cache_line: int = 64) -> tuple[int, ...]:
    """The offsets slot 0 cycles through in the slabs of ``size_class``, 0 first.

    A slab of ``slab_size`` bytes holds ``slots_per_slab`` slots and leaves
    ``slack = slab_size % slot_size`` bytes unused; the colors are the multiples of
    ``step = lcm(cache_line, alignment)`` from 0 to ``slack``, so a colored slab holds as many
    slots as an uncolored one and every slot stays aligned to the class.

    With 4096-byte slabs, the default classes (powers of two) leave no slack: one color, 0.
    Classes that can be colored with 64-byte lines leave at least 64 bytes of slack, such as
    192 (slack 64: colors 0, 64), 320 (slack 256: 0, 64, 128, 192, 256), 448 (64), 704 (576)
    or 768 (slack 256, alignment 256: 0, 256); a 48-byte class leaves 16 (one color).

    Raises:
        TypeError: ``cache_line`` is not an int.
        ValueError: ``cache_line`` is not a positive power of two.

    Complexity: O(number of colors).
    """
    _check_cache_line(cache_line)
    step = math.lcm(cache_line, size_class.alignment)
    slack = size_class.slab_size - size_class.slots_per_slab * size_class.slot_size
    return tuple(range(0, slack + 1, step))


class Coloring(Policy):
    """Start slot 0 of successive slabs of a class at offsets cycling through the colors.

    What it changes: the ``slab_color`` decision. The n-th slab a class creates starts at
    ``colors[n % len(colors)]`` (see :func:`colors`): slots with the same index in successive
    slabs fall ``step`` bytes apart, so in a cache indexed by address bits they map to
    different sets instead of competing for one (Bonwick 1994 measured the gain on SPARC).
    The unused slack moves from the end of the slab to its start.

    Cost: one list index and an addition per new slab; nothing per block. A class without
    slack (every default class) gets color 0 always, exactly as without the plugin.

    Out of memory: ``slab_color`` computes the color and the class's next turn before its one
    write, a list store, which allocates nothing. The turn is taken when the color is given,
    before the core maps the slab: a slab that then cannot be made (no memory) has used its
    turn, and the next slab of the class gets the following color. Every color is as valid as
    any other, so nothing else depends on it.

    Args:
        cache_line: the cache-line size the offsets are multiples of (default 64).

    Raises:
        TypeError: ``cache_line`` is not an int.
        ValueError: ``cache_line`` is not a positive power of two.
    """

    name = "coloring"
    description = "slab coloring (Bonwick 1994): slot 0 of successive slabs at cycling offsets"

    def __init__(self, cache_line: int = 64) -> None:
        _check_cache_line(cache_line)
        self.cache_line = cache_line

    def bind(self, heap: Heap) -> None:
        """Compute each class's colors once; count slabs per class from here on."""
        super().bind(heap)
        self._colors = [colors(c, self.cache_line) for c in heap.size_classes]
        self._next = [0] * len(self._colors)

    def palette(self, size_class: SizeClass) -> tuple[int, ...]:
        """The colors slabs of ``size_class`` cycle through (after :meth:`bind`). O(1)."""
        return self._colors[size_class.index]

    def slab_color(self, size_class: SizeClass, serial: int) -> int:
        """The next color of the class, cycling. All or nothing. Complexity: O(1)."""
        index = size_class.index
        palette = self._colors[index]
        turn = self._next[index]
        color = palette[turn % len(palette)]
        following = turn + 1
        self._next[index] = following
        return color

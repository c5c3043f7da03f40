"""``reclaim``: give empty slabs back to the page source, keeping a few as a cache."""

from __future__ import annotations

from pyslab import Policy
from pyslab.core import MemorySlab, SizeClass


class Reclaim(Policy):
    """Return a slab to the page source when it becomes empty, beyond ``keep`` empty slabs.

    Keeping a few empty slabs per class avoids unmapping a slab only to map a new one at once
    when a class oscillates around a slab boundary (CPython's obmalloc keeps one free arena
    for the same reason, bpo-37257). With the ``mmap`` page source the pages leave the
    process: ``munmap`` returns them to the kernel.

    Args:
        keep: empty slabs each class may keep cached (default 1; 0 releases every one).

    Raises:
        TypeError, ValueError: ``keep`` is not a non-negative int.
    """

    name = "reclaim"
    description = "return empty slabs to the page source, keeping `keep` (default 1) per class"

    def __init__(self, keep: int = 1) -> None:
        if type(keep) is not int:
            raise TypeError(f"keep must be an int, not {keep!r}")
        if keep < 0:
            raise ValueError(f"keep must be at least 0, not {keep}")
        self.keep = keep

    def keep_empty(self, size_class: SizeClass, slab: MemorySlab) -> bool:
        """Keep ``slab`` while the class has at most ``keep`` empty slabs. Complexity: O(1)."""
        return len(size_class.empty) <= self.keep

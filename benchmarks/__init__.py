"""pyslab's benchmark suite: ``python -m benchmarks [--quick] [--only NAME ...]``.

Not part of the installed library: run it from a checkout, with the ``bench`` extra
(``pip install -e ".[bench]"``, which ``dev`` includes) for ``rich`` and ``matplotlib``.

Every comparison times its contenders in one process, interleaved over rotating rounds, and
reports medians and ratios of medians (:mod:`benchmarks.timing`, the one timing core). The
contenders are every pyslab policy configuration discovered at run time
(:func:`benchmarks.heaps.discover`), libc ``malloc``/``free`` and ``PyMem_Malloc``/``PyMem_Free``
through ctypes, and ``ctypes.create_string_buffer``.

Measurements (numbered as in the issue), one module each:

1. :mod:`~benchmarks.pairs` - an alloc+free pair of 16, 64 and 512 bytes.
2. :mod:`~benchmarks.batch` - a batch of allocations, then frees in random order.
3. :mod:`~benchmarks.buffers` - a slab-backed ctypes buffer vs ``create_string_buffer``.
4. :mod:`~benchmarks.scaling` - free cost as live slabs grow, against libc's growth.
5. :mod:`~benchmarks.bookkeeping` - Python bookkeeping bytes per byte mapped.
6. :mod:`~benchmarks.reclamation` - mapped bytes and RSS after freeing everything.
7. :mod:`~benchmarks.hardening` - each hardening option's cost.
8. :mod:`~benchmarks.replay` - ``pyslab replay`` of a real program's memray capture against
   ``memray stats`` on the same file (commands timed whole, each in a process of its own).

Targets are reported, never asserted: the exit status is 0 whatever the figures.

Also: ``python -m benchmarks.hotpath`` profiles ``SlabAllocator.alloc``/``free`` (cProfile,
line counts, the cost of each primitive they are made of), for whoever optimizes the core.
"""

"""Placement against fragmentation: slabs left mapped after a churn, first-fit vs fullest-first.

Two workloads, both with ``reclaim`` (keep one empty slab per class), 64-byte blocks:

phased
    Sixteen slabs fill. The older eight keep most of their blocks (long-lived data with 16
    holes each); the newer eight were a burst of temporaries, four per slab survive a while.
    New long-lived blocks then arrive while the survivors die, in a random interleaving.
random decline
    4000 blocks, then 12 rounds that each free half the live blocks at random and allocate
    0.8 times as many, frees and allocations interleaved at random.

Prints the slabs mapped at the end of each run (mean over the seeds) and the ``stats``
report of one fullest-first run.

Run: python examples/fragmentation_churn.py [--seeds N]
"""

from __future__ import annotations

import argparse
import random
import statistics

import pyslab
import pyslab.observe

SLOT = 64


def phased(spec: str, seed: int) -> tuple[int, pyslab.SlabAllocator]:
    """The phased churn; returns the slabs mapped and the allocator (still open)."""
    rng = random.Random(seed)
    alloc = pyslab.SlabAllocator(policy=spec)
    per_slab = alloc.slab_size // SLOT
    blocks = [alloc.alloc(SLOT) for _ in range(16 * per_slab)]
    by_serial: dict[int, list[int]] = {}
    for address in blocks:
        slab = alloc.policy.find_owner(address)
        assert slab is not None
        by_serial.setdefault(slab.serial, []).append(address)
    survivors: list[int] = []
    for serial in range(16):
        group = by_serial[serial]
        rng.shuffle(group)
        dying = group[:16] if serial < 8 else group[4:]
        if serial >= 8:
            survivors += group[:4]
        for address in dying:
            alloc.free(address)
    steps = ["alloc"] * (8 * 16) + ["free"] * len(survivors)
    rng.shuffle(steps)
    rng.shuffle(survivors)
    for step in steps:
        if step == "alloc":
            alloc.alloc(SLOT)
        else:
            alloc.free(survivors.pop())
    alloc.validate()
    return alloc.stats().slabs, alloc


def random_decline(spec: str, seed: int) -> int:
    """The random decline; returns the slabs mapped at the end."""
    rng = random.Random(seed)
    with pyslab.SlabAllocator(policy=spec) as alloc:
        live = [alloc.alloc(SLOT) for _ in range(4000)]
        for _ in range(12):
            frees = len(live) // 2
            steps = ["free"] * frees + ["alloc"] * (frees * 4 // 5)
            rng.shuffle(steps)
            for step in steps:
                if step == "free":
                    i = rng.randrange(len(live))
                    live[i], live[-1] = live[-1], live[i]
                    alloc.free(live.pop())
                else:
                    live.append(alloc.alloc(SLOT))
        alloc.validate()
        return alloc.stats().slabs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="runs per workload (default 10)")
    seeds = range(parser.parse_args().seeds)
    print(f"slabs mapped at the end, mean over {len(seeds)} seeds [min-max]")
    for name, run in (
        ("phased", lambda spec, seed: phased(spec, seed)[0]),
        ("random decline", random_decline),
    ):
        for spec in ("first-fit+reclaim", "fullest-first+reclaim"):
            counts = [run(spec, seed) for seed in seeds]
            print(
                f"  {name:<15} {spec:<24} {statistics.mean(counts):6.1f} "
                f"[{min(counts)}-{max(counts)}]"
            )
    _, alloc = phased("fullest-first+reclaim+stats", 0)
    with alloc:
        print("\nreport of the phased churn under fullest-first+reclaim+stats:")
        print(pyslab.observe.report(alloc))


if __name__ == "__main__":
    main()

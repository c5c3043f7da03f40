"""fork() while other threads use the allocator: scenarios run in a throwaway process.

Each scenario forks while another thread is inside an allocator call (holding the lock, in the
middle of an operation), then has the child allocate, free, validate and check every block the
parent had, and exit with a status saying what it found. The parent waits for each child with
a deadline and kills it if it hangs: a child that inherited a lock held by a thread that does not
exist in it would wait forever. The test suite runs this module in a subprocess with a timeout,
so that not even a hang of the parent can stall CI::

    python -m tests.reliability.forking all      # or one scenario name; exit status 0 = pass

Exit status of a child: 0 ok, 2 a block of the parent lost its pattern, 3 validate() failed,
4 any other exception; a hung child is reported as ``hang``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable

import pyslab
from pyslab import Policy
from pyslab.core import MemorySlab
from tests.support import block_intact, fill_block, pattern_byte

__all__ = ["SCENARIOS", "main"]

SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 5000)
CHILD_DEADLINE = 5.0
"""Seconds a child may take before it is declared hung and killed."""


class Blocker(Policy):
    """Holds the allocator's lock, in the middle of an allocation, until told to let go.

    ``block_allocated`` runs under the lock with the operation half done (the block is taken,
    the call not finished); when armed, it signals ``inside`` and waits for ``release``.
    """

    name = "blocker"

    def __init__(self) -> None:
        self.armed = False
        self.inside = threading.Event()
        self.release = threading.Event()

    def block_allocated(self, slab: MemorySlab, address: int, size: int) -> None:
        """Wait here, lock held, when armed."""
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.armed = False
            self.inside.set()
            self.release.wait(CHILD_DEADLINE)


def _child_work(allocator: pyslab.SlabAllocator, kept: dict[int, tuple[int, int]]) -> int:
    """In the child: allocate and free every size, check the parent's blocks. Exit status."""
    try:
        mine = []
        for i, size in enumerate(SIZES * 4):
            address = allocator.alloc(size)
            fill_block(address, size, pattern_byte(i))
            mine.append((address, size, pattern_byte(i)))
        for address, size, byte in mine:
            if not block_intact(address, size, byte):
                return 2
            allocator.free(address)
        if any(not block_intact(a, n, b) for a, (n, b) in kept.items()):
            return 2
        try:
            allocator.validate()
        except pyslab.CorruptionError:
            traceback.print_exc()
            return 3
        return 0
    except BaseException:
        traceback.print_exc()
        return 4


def _wait(pid: int) -> str:
    """Wait for a child with a deadline: its exit status as text, or ``hang`` (then killed)."""
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return "ok" if code == 0 else f"exit {code}"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hang"


def _fork_and_check(allocator: pyslab.SlabAllocator, kept: dict[int, tuple[int, int]]) -> str:
    pid = os.fork()
    if pid == 0:
        os._exit(_child_work(allocator, kept))
    return _wait(pid)


def _populated(
    policy: pyslab.PolicySpec,
) -> tuple[pyslab.SlabAllocator, dict[int, tuple[int, int]]]:
    allocator = pyslab.SlabAllocator(policy=policy)
    kept: dict[int, tuple[int, int]] = {}
    for i, size in enumerate(SIZES * 3):
        address = allocator.alloc(size)
        fill_block(address, size, pattern_byte(i + 100))
        kept[address] = (size, pattern_byte(i + 100))
    return allocator, kept


def fork_while_a_thread_is_inside_an_allocation() -> list[str]:
    """Another thread holds the lock mid-allocation when the main thread forks."""
    blocker = Blocker()
    allocator, kept = _populated(["dict-lookup", blocker])
    blocker.armed = True
    holder = threading.Thread(target=lambda: allocator.free(allocator.alloc(64)))
    holder.start()
    if not blocker.inside.wait(CHILD_DEADLINE):
        return ["the holder never got inside"]
    # Let the holder go a little later: an allocator that takes its lock before fork (as glibc
    # does) waits for it; one that resets the lock in the child does not need to.
    threading.Timer(0.2, blocker.release.set).start()
    result = _fork_and_check(allocator, kept)
    holder.join()
    allocator.validate()
    allocator.close()
    return [result]


def fork_from_a_thread_while_others_hammer() -> list[str]:
    """Four threads allocate and free without pause; a fifth forks 10 times."""
    allocator, kept = _populated("dict-lookup+reclaim")
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        try:
            i = seed
            while not stop.is_set():
                size = SIZES[i % len(SIZES)]
                allocator.free(allocator.alloc(size))
                i += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    results: list[str] = []

    def fork_ten_times() -> None:
        for _ in range(10):
            results.append(_fork_and_check(allocator, kept))
            if results[-1] != "ok":
                break

    forker = threading.Thread(target=fork_ten_times)
    forker.start()
    forker.join()
    stop.set()
    for thread in threads:
        thread.join()
    results.extend(repr(e) for e in errors)
    allocator.validate()
    allocator.close()
    return results


def fork_twice_and_use_threads_in_the_child() -> list[str]:
    """The child forks again, and runs threads of its own; two allocators, one closed."""
    allocator, kept = _populated("first-fit")
    closed = pyslab.SlabAllocator()
    closed.alloc(64)
    closed.close()
    pid = os.fork()
    if pid == 0:
        status = _child_work(allocator, kept)
        if status == 0:
            codes: list[int] = []
            workers = [
                threading.Thread(target=lambda: codes.append(_child_work(allocator, {})))
                for _ in range(3)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            status = max(codes, default=0)
        if status == 0:
            status = 0 if _fork_and_check(allocator, kept) == "ok" else 5
        os._exit(status)
    result = _wait(pid)
    allocator.close()
    return [result]


SCENARIOS: dict[str, Callable[[], list[str]]] = {
    "inside-an-allocation": fork_while_a_thread_is_inside_an_allocation,
    "threads-hammer": fork_from_a_thread_while_others_hammer,
    "nested": fork_twice_and_use_threads_in_the_child,
}


def main(argv: list[str]) -> int:
    """Run the named scenarios (``all`` for every one); print one line each; 0 if all pass."""
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, Python >= 3.12
    names = list(SCENARIOS) if not argv or argv == ["all"] else argv
    failed = 0
    for name in names:
        results = SCENARIOS[name]()
        ok = results and all(r == "ok" for r in results)
        failed += not ok
        print(f"{name}: {'ok' if ok else 'FAILED'} {results}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

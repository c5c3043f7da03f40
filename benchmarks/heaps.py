"""What the measurements compare: pyslab configurations discovered at run time, libc and PyMem.

Every contender is a :class:`Heap`: an ``alloc(size) -> address`` and a ``free(address)`` with
the same call shape, so that one loop body times all of them and the loop's own cost is the
same on every side of a ratio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyslab
import pyslab.core

__all__ = [
    "Configuration",
    "Discovery",
    "Heap",
    "NewSlabFiller",
    "build_full_heap",
    "discover",
    "filling_allocator",
    "hardening_policies",
    "libc_heap",
    "pymem_heap",
    "release_libc_free_memory",
    "rss_bytes",
]


@dataclass
class Heap:
    """One contender's allocator: two callables and a way to tear it down."""

    name: str
    alloc: Callable[[int], int]
    free: Callable[[int], None]
    close: Callable[[], None] = lambda: None
    allocator: pyslab.SlabAllocator | None = None


def _bind_pair(
    dll: ctypes.CDLL, malloc: str, free: str
) -> tuple[Callable[[int], int], Callable[[int], None]]:
    """``malloc``/``free`` of ``dll`` with argtypes and restype set, as a careful user would."""
    alloc_fn = getattr(dll, malloc)
    alloc_fn.restype = ctypes.c_void_p
    alloc_fn.argtypes = [ctypes.c_size_t]
    free_fn = getattr(dll, free)
    free_fn.restype = None
    free_fn.argtypes = [ctypes.c_void_p]
    return alloc_fn, free_fn


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def libc_heap() -> Heap:
    """libc ``malloc``/``free`` called through ctypes."""
    alloc, free = _bind_pair(_LIBC, "malloc", "free")
    return Heap("libc malloc/free", alloc, free)


def pymem_heap() -> Heap:
    """CPython's ``PyMem_Malloc``/``PyMem_Free`` called through ``ctypes.pythonapi``.

    ``pythonapi`` is a ``PyDLL``: the GIL stays held across the call, as PyMem requires.
    """
    alloc, free = _bind_pair(ctypes.pythonapi, "PyMem_Malloc", "PyMem_Free")
    return Heap("PyMem_Malloc/Free", alloc, free)


def pyslab_heap(config: Configuration) -> Heap:
    """A fresh allocator under ``config``, as a :class:`Heap`."""
    allocator = pyslab.SlabAllocator(policy=config.spec)
    return Heap(config.label, allocator.alloc, allocator.free, allocator.close, allocator)


@dataclass(frozen=True)
class Configuration:
    """One policy configuration of pyslab.

    Attributes:
        spec: the ``policy=`` argument (None: the allocator's default).
        label: how tables name it (the resolved composition, ``(default)`` marked).
        names: the registered policy names it is built from (base included).
        o1_free: True when the owner lookup on ``free`` is not the base policy's O(slabs) walk.
        thread_safe: False when one of its policies says it is not thread-safe.
        find_owner_by: the policy providing ``find_owner``.
    """

    spec: str | None
    label: str
    names: tuple[str, ...]
    o1_free: bool
    thread_safe: bool
    find_owner_by: str

    @property
    def is_default(self) -> bool:
        """True for the configuration ``SlabAllocator()`` gets."""
        return self.spec is None


@dataclass
class Discovery:
    """The configurations found, the registered policies, and what was left out and why."""

    base: str
    policies: dict[str, str]
    configurations: list[Configuration]
    skipped: list[str] = field(default_factory=list)

    def default(self) -> Configuration:
        """The default configuration (always first)."""
        return self.configurations[0]

    def singles(self) -> list[Configuration]:
        """The default and every configuration of one registered policy."""
        return [c for c in self.configurations if c.is_default or len(c.names) <= 2]

    def o1(self, *, exclude: Iterable[str] = ()) -> list[Configuration]:
        """Configurations whose ``free`` finds the owner in O(1), without the policies named."""
        left_out = set(exclude)
        return [c for c in self.configurations if c.o1_free and not left_out & set(c.names)]

    def hardening(self) -> list[str]:
        """The registered hardening policies (see :func:`hardening_policies`)."""
        return hardening_policies(self.policies)


_UNSAFE_WORDS = ("not thread-safe", "not thread safe", "single-thread", "thread-unsafe")


def _thread_safe(policy: pyslab.Policy) -> bool:
    """A policy is taken as thread-safe unless it says otherwise (the core locks every call)."""
    flag = getattr(type(policy), "thread_safe", True)
    text = type(policy).description.lower()
    return bool(flag) and not any(word in text for word in _UNSAFE_WORDS)


def _provider_name(hook: object) -> str:
    owner = getattr(hook, "__self__", None)
    return type(owner).name if isinstance(owner, pyslab.Policy) else "?"


def _describe(spec: str | None) -> Configuration:
    """Build the configuration once, exercise it, and read what it resolved to.

    Raises:
        pyslab.PyslabError, TypeError, ValueError: the composition cannot be built or used.
    """
    with pyslab.SlabAllocator(policy=spec) as allocator:
        blocks = [allocator.alloc(size) for size in (16, 64, 512, 16, 64, 512)]
        for block in reversed(blocks):
            allocator.free(block)
        allocator.validate()
        resolved = allocator.policy
        names = tuple(type(p).name for p in resolved.policies)
        provider = _provider_name(resolved.find_owner)
        return Configuration(
            spec=spec,
            label=f"{resolved.name} (default)" if spec is None else resolved.name,
            names=names,
            o1_free=provider != names[0],
            thread_safe=all(_thread_safe(p) for p in resolved.policies),
            find_owner_by=provider,
        )


def _candidate_specs(base: str, names: list[str]) -> Iterator[str]:
    """The base alone, then X, X+reclaim and dict-lookup+X for every registered X."""
    others = [n for n in names if n != base]
    yield base
    yield from others
    if "reclaim" in others:
        yield from (f"{n}+reclaim" for n in others if n != "reclaim")
    if "dict-lookup" in others:
        yield from (f"dict-lookup+{n}" for n in others if n not in ("dict-lookup", "reclaim"))


def discover(limit: int = 24) -> Discovery:
    """Every configuration worth measuring that the registered policies allow, at most ``limit``.

    The default comes first, then the base policy and each registered policy alone, then
    ``X+reclaim`` and ``dict-lookup+X``. Compositions that resolve to one already listed are
    dropped, and so are ones that fail to build (named in ``skipped``, with the error).

    Complexity: one small allocator per candidate.
    """
    registered = pyslab.policies()
    default = _describe(None)
    base = default.names[0]
    found = [default]
    seen = {default.names}
    skipped: list[str] = []
    for spec in _candidate_specs(base, sorted(registered)):
        if len(found) >= limit:
            skipped.append(f"{spec}: over the limit of {limit} configurations")
            continue
        try:
            config = _describe(spec)
        except (pyslab.PyslabError, TypeError, ValueError) as error:
            skipped.append(f"{spec}: {type(error).__name__}: {error}")
            continue
        if config.names not in seen:
            seen.add(config.names)
            found.append(config)
    return Discovery(base, registered, found, skipped)


def hardening_policies(registered: dict[str, str]) -> list[str]:
    """Policies named ``debug`` or whose description mentions hardening."""
    return [
        name for name, text in registered.items()
        if name == "debug" or "harden" in text.lower()
    ]


def bool_options(cls: type[pyslab.Policy]) -> dict[str, bool]:
    """The boolean keyword parameters of a policy class's constructor, with their defaults."""
    options: dict[str, bool] = {}
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if isinstance(parameter.default, bool):
            options[parameter.name] = parameter.default
    return options


class NewSlabFiller(pyslab.Policy):
    """Benchmark-only: while ``filling``, ``select_slab`` answers None (a new slab each time).

    Filling a heap block after block leaves every slab full; first-fit's ``select_slab`` then
    walks all of them each time the current slab fills, only to answer None: O(slabs) per new
    slab, O(N**2) to build N slabs (about 5 minutes for 100,000). While filling, this policy
    gives that answer at once, so the same heap is built in O(N); afterwards it hands every
    decision to the ``select_slab`` it replaced (one extra call, made only when a class has no
    current slab). Placed last, it changes no other hook of the configuration, and no policy
    instance is replaced: per-block state (``debug``'s) stays valid.

    Args:
        fallback: the configuration's own ``select_slab``.
    """

    name = "bench-filler"
    description = "benchmark-only: map a new slab whenever the current one is full, while filling"

    def __init__(
        self, fallback: Callable[[pyslab.core.SizeClass], pyslab.core.MemorySlab | None]
    ) -> None:
        self.filling = True
        self._fallback = fallback

    def select_slab(self, size_class: pyslab.core.SizeClass) -> pyslab.core.MemorySlab | None:
        """None while filling, else the configuration's answer."""
        return None if self.filling else self._fallback(size_class)


def filling_allocator(config: Configuration) -> tuple[pyslab.SlabAllocator, NewSlabFiller]:
    """A fresh allocator under ``config`` with a :class:`NewSlabFiller` (filling) last.

    Raises:
        pyslab.PyslabError: the configuration cannot be built.
    """
    policies = pyslab.policy.parse_policies(config.spec)  # parameters kept; None: the default
    provider = next(
        p for p in reversed(policies) if type(p).select_slab is not pyslab.Policy.select_slab
    )
    filler = NewSlabFiller(provider.select_slab)
    return pyslab.SlabAllocator(policy=[*policies, filler]), filler


def build_full_heap(
    config: Configuration, slabs: int, size: int, *, keep_addresses: bool = True
) -> tuple[Heap, list[int]]:
    """An allocator under ``config`` holding ``slabs`` full slabs of ``size``-byte blocks.

    Returns the heap and the address of every live block (none when ``keep_addresses`` is
    False: the blocks stay live in the allocator, and no Python int per block outlives its
    ``alloc`` call, which is what measuring the allocator's own memory needs).

    Raises:
        pyslab.PyslabError: the configuration cannot be built.

    Complexity: O(blocks), one ``mmap`` per slab.
    """
    allocator, filler = filling_allocator(config)
    try:
        # Filled through the core's own alloc: a front end's magazines would take blocks
        # ahead of those asked for, mapping slabs beyond the count. The blocks are the core's
        # to free either way (a magazine takes any live block).
        alloc, source = pyslab.SlabAllocator.alloc.__get__(allocator), allocator.page_source
        first = alloc(size)
        size_class = next(c for c in allocator.size_classes if c.live)
        # Slab capacity varies with coloring: stop when the last slab asked for is full (the
        # core clears ``current`` exactly when its slab fills).
        limit = slabs * allocator.slab_size
        blocks: list[int] = [first] if keep_addresses else []
        while size_class.current is not None or source.mapped_bytes < limit:
            address = alloc(size)
            if keep_addresses:
                blocks.append(address)
        filler.filling = False
    except BaseException:
        allocator.close()
        raise
    return Heap(config.label, allocator.alloc, allocator.free, allocator.close, allocator), blocks


def release_libc_free_memory() -> None:
    """Ask glibc to return its free heap memory (``malloc_trim(0)``), so RSS baselines are clean.

    Does nothing where libc has no ``malloc_trim`` (not glibc).
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        trim(0)


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def anonymous_mapped_bytes() -> int:
    """Bytes of every anonymous mapping of this process (``/proc/self/maps`` lines with no
    file: pyslab's slabs, libc's and Python's own heap and arenas alike), so that what the
    interpreter keeps for pyslab's bookkeeping counts too.

    Complexity: O(mappings of the process).
    """
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            name = fields[5].strip() if len(fields) == 6 else ""
            if name and not name.startswith("[heap]") and not name.startswith("[anon"):
                continue  # a file, the stack, vdso...
            start, end = fields[0].split("-")
            total += int(end, 16) - int(start, 16)
    return total

"""libexpat on pyslab: a real C library allocating through the C-callable allocator.

expat takes its allocator as an ``XML_Memory_Handling_Suite`` given to ``XML_ParserCreate_MM``
and allocates everything through it: the parser itself, its input buffer, tag stack, name
pools and hash tables. The same document is parsed with pyslab and with expat's default
(libc), and the event streams must be the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import threading
import xml.parsers.expat
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

import pyslab
import pyslab.core
import pyslab.interop
from pyslab.interop.cabi import FREE_FUNC, MALLOC_FUNC, REALLOC_FUNC

_EXPAT_PATH = ctypes.util.find_library("expat")
pytestmark = pytest.mark.skipif(_EXPAT_PATH is None, reason="libexpat is not installed")

Event = tuple[Any, ...]


class MemoryHandlingSuite(ctypes.Structure):
    """``XML_Memory_Handling_Suite`` of expat.h."""

    _fields_ = [("malloc_fcn", MALLOC_FUNC), ("realloc_fcn", REALLOC_FUNC), ("free_fcn", FREE_FUNC)]


START = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p))
END = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
TEXT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


def _bind() -> ctypes.CDLL:
    lib = ctypes.CDLL(_EXPAT_PATH or "libexpat.so.1")
    lib.XML_ParserCreate.restype = ctypes.c_void_p
    lib.XML_ParserCreate.argtypes = [ctypes.c_char_p]
    lib.XML_ParserCreate_MM.restype = ctypes.c_void_p
    lib.XML_ParserCreate_MM.argtypes = [
        ctypes.c_char_p, ctypes.POINTER(MemoryHandlingSuite), ctypes.c_char_p,
    ]
    lib.XML_ParserFree.argtypes = [ctypes.c_void_p]
    lib.XML_SetElementHandler.argtypes = [ctypes.c_void_p, START, END]
    lib.XML_SetCharacterDataHandler.argtypes = [ctypes.c_void_p, TEXT]
    lib.XML_Parse.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.XML_GetErrorCode.argtypes = [ctypes.c_void_p]
    lib.XML_ErrorString.restype = ctypes.c_char_p
    return lib


expat = _bind() if _EXPAT_PATH else None


class ExpatError(Exception):
    """XML_Parse failed; ``code`` is expat's XML_Error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"expat error {code}: {message}")
        self.code = code


class Parser:
    """One expat parser recording its events; on pyslab when given its C functions."""

    def __init__(self, functions: pyslab.interop.CFunctions | None = None) -> None:
        assert expat is not None
        if functions is None:
            self.handle = expat.XML_ParserCreate(None)
        else:
            suite = MemoryHandlingSuite(functions.malloc, functions.realloc, functions.free)
            self.handle = expat.XML_ParserCreate_MM(None, ctypes.byref(suite), None)  # copied
        if not self.handle:
            raise MemoryError("XML_ParserCreate returned NULL")
        self.events: list[Event] = []
        # The handlers must live as long as the parser: kept on it.
        self._handlers = (START(self._start), END(self._end), TEXT(self._text))
        expat.XML_SetElementHandler(self.handle, self._handlers[0], self._handlers[1])
        expat.XML_SetCharacterDataHandler(self.handle, self._handlers[2])

    def _start(self, _: object, name: bytes, attributes: Any) -> None:
        pairs = []
        i = 0
        while attributes[i] is not None:
            pairs.append((attributes[i], attributes[i + 1]))
            i += 2
        self.events.append(("start", name, tuple(pairs)))

    def _end(self, _: object, name: bytes) -> None:
        self.events.append(("end", name))

    def _text(self, _: object, data: int, length: int) -> None:
        self.events.append(("text", ctypes.string_at(data, length)))

    def parse(self, document: bytes, chunk: int = 8192) -> list[Event]:
        """Feed ``document`` in chunks (expat copies partial tokens into its own buffer)."""
        assert expat is not None
        for offset in range(0, len(document), chunk):
            piece = document[offset : offset + chunk]
            final = int(offset + chunk >= len(document))
            if expat.XML_Parse(self.handle, piece, len(piece), final) != 1:
                code = expat.XML_GetErrorCode(self.handle)
                raise ExpatError(code, (expat.XML_ErrorString(code) or b"").decode())
        return self.events

    def __enter__(self) -> Parser:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert expat is not None
        expat.XML_ParserFree(self.handle)


def make_document(seed: int = 3, target: int = 400 * 1024) -> bytes:
    """A real XML document of about ``target`` bytes: nesting, attributes, entities, character
    references, CDATA, comments and non-ASCII text."""
    rng = random.Random(seed)
    words = ["slab", "größe", "ß", "mmap", "&amp;", "&lt;tag&gt;", "&#x263A;", "日本語", "free"]
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<catalog version="1">\n']
    size = sum(map(len, parts))
    item = 0
    while size < target:
        item += 1
        depth = rng.randint(1, 6)
        chunk = []
        for level in range(depth):
            attributes = " ".join(
                f'a{k}="{rng.choice(words)}{rng.randint(0, 10**6)}"'
                for k in range(rng.randint(0, 4))
            )
            chunk.append(f"<node{level} id='{item}-{level}' {attributes}>")
            chunk.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))))
        if item % 7 == 0:
            chunk.append(f"<![CDATA[raw <data> & {item}]]><!-- comment {item} -->")
        for level in reversed(range(depth)):
            chunk.append(f"tail{level}</node{level}>\n")
        text = "".join(chunk)
        parts.append(text)
        size += len(text.encode())
    parts.append("</catalog>\n")
    return "".join(parts).encode()


@pytest.fixture(scope="module")
def document() -> bytes:
    return make_document()


@pytest.fixture(scope="module")
def expected(document: bytes) -> list[Event]:
    with Parser() as parser:
        return parser.parse(document)


@pytest.fixture
def alloc() -> Iterator[pyslab.SlabAllocator]:
    with pyslab.SlabAllocator(policy="dict-lookup") as allocator:
        yield allocator
        allocator.validate()


def _coalesced(events: list[Event]) -> list[Event]:
    """Adjacent character data joined and decoded: independent of how expat splits it."""
    out: list[Event] = []
    for event in events:
        if event[0] == "text" and out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + event[1])
        else:
            out.append(event)
    return [("text", e[1].decode()) if e[0] == "text" else e for e in out]


def test_the_document_is_real_and_large(document: bytes, expected: list[Event]) -> None:
    assert len(document) >= 300 * 1024
    assert sum(1 for e in expected if e[0] == "start") > 3000


def test_expat_parses_on_pyslab_exactly_as_on_libc(
    alloc: pyslab.SlabAllocator, document: bytes, expected: list[Event]
) -> None:
    functions = pyslab.c_functions(alloc)
    with Parser(functions) as parser:
        events = parser.parse(document)
        during = alloc.stats()
    after = alloc.stats()
    assert events == expected
    # The parser's memory was served by pyslab: slab blocks and large blocks while it lived...
    assert during.live_blocks > 0 and during.large_blocks > 0
    assert sum(c.peak_used for c in during.classes) > 10
    # ...and every block came back with XML_ParserFree.
    assert (after.live_blocks, after.large_blocks, after.large_bytes) == (0, 0, 0)
    assert not functions.failures


def test_the_events_are_those_of_pythons_own_expat(document: bytes, expected: list[Event]) -> None:
    events: list[Event] = []
    parser = xml.parsers.expat.ParserCreate()
    parser.ordered_attributes = True
    parser.StartElementHandler = lambda name, attributes: events.append(
        ("start", name.encode(), tuple(
            (attributes[i].encode(), attributes[i + 1].encode())
            for i in range(0, len(attributes), 2)
        ))
    )
    parser.EndElementHandler = lambda name: events.append(("end", name.encode()))
    parser.CharacterDataHandler = lambda data: events.append(("text", data.encode()))
    parser.Parse(document, True)
    assert _coalesced(events) == _coalesced(expected)


def test_parsers_on_many_threads_share_one_allocator(
    alloc: pyslab.SlabAllocator, document: bytes, expected: list[Event]
) -> None:
    """XML_Parse releases the GIL: the parsers run, and allocate, in parallel."""
    functions = pyslab.c_functions(alloc)
    results: dict[int, Any] = {}  # the events, or the exception
    small = document[: 120 * 1024]
    small_end = small.rindex(b"\n<node0") + 1
    piece = small[:small_end] + b"</catalog>\n"
    with Parser() as reference:
        wanted = reference.parse(piece)

    def work(index: int) -> None:
        try:
            with Parser(functions) as parser:
                results[index] = parser.parse(piece, chunk=1000 + 500 * index)
        except BaseException as error:  # reported to the main thread
            results[index] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(_coalesced(r) == _coalesced(wanted) for r in results.values()), results
    assert alloc.stats().live_blocks == 0 and not functions.failures


class Budget:
    """A page source that maps at most ``slabs`` slabs, then refuses: out of memory, for real."""

    def __init__(self, slabs: int) -> None:
        self.source = pyslab.core.MmapPageSource()
        self.left = slabs

    @property
    def page_size(self) -> int:
        return self.source.page_size

    @property
    def mapped_bytes(self) -> int:
        return self.source.mapped_bytes

    def map_slab(self, size: int) -> int:
        if self.left == 0:
            raise MemoryError(f"the budget allows no more slabs of {size} bytes")
        self.left -= 1
        return self.source.map_slab(size)

    def release_slab(self, address: int, size: int) -> None:
        self.source.release_slab(address, size)

    def close(self) -> None:
        self.source.close()


def test_out_of_memory_reaches_expat_as_null_and_nothing_leaks(document: bytes) -> None:
    with pyslab.SlabAllocator(policy="dict-lookup", page_source=Budget(slabs=3)) as alloc:
        functions = pyslab.c_functions(alloc)
        with Parser(functions) as parser, pytest.raises(ExpatError) as failed:
            parser.parse(document)
        assert failed.value.code == 1  # XML_ERROR_NO_MEMORY
        assert alloc.stats().live_blocks == 0
        assert functions.failures and all(
            isinstance(f.error, MemoryError) for f in functions.failures
        )
        with pytest.raises(pyslab.interop.CFunctionError, match="malloc"):
            functions.check()


def test_a_parser_cannot_be_made_on_a_closed_allocator() -> None:
    alloc = pyslab.SlabAllocator()
    functions = pyslab.c_functions(alloc)
    alloc.close()
    with pytest.raises(MemoryError, match="NULL"):
        Parser(functions)
    assert isinstance(functions.failures[0].error, pyslab.AllocatorClosedError)

"""libexpat allocating through pyslab: a C library given pyslab as its malloc/realloc/free.

expat's ``XML_ParserCreate_MM`` takes an ``XML_Memory_Handling_Suite``: three function
pointers that the parser uses for every allocation it makes. ``pyslab.c_functions(alloc)`` provides
them. The script parses a generated document, counts its elements and shows what the parser
held in pyslab before ``XML_ParserFree`` and after.

Run: python examples/expat_on_pyslab.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pyslab
import pyslab.core
from pyslab.interop.cabi import FREE_FUNC, MALLOC_FUNC, REALLOC_FUNC


class MemoryHandlingSuite(ctypes.Structure):
    """``XML_Memory_Handling_Suite`` of expat.h."""

    _fields_ = [("malloc_fcn", MALLOC_FUNC), ("realloc_fcn", REALLOC_FUNC), ("free_fcn", FREE_FUNC)]


START = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p))
END = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


def load_expat() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("expat")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.XML_ParserCreate_MM.restype = ctypes.c_void_p
    lib.XML_ParserCreate_MM.argtypes = [
        ctypes.c_char_p, ctypes.POINTER(MemoryHandlingSuite), ctypes.c_char_p,
    ]
    lib.XML_ParserFree.argtypes = [ctypes.c_void_p]
    lib.XML_SetElementHandler.argtypes = [ctypes.c_void_p, START, END]
    lib.XML_Parse.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.XML_GetErrorCode.argtypes = [ctypes.c_void_p]
    lib.XML_ErrorString.restype = ctypes.c_char_p
    return lib


def document(items: int) -> bytes:
    rows = "".join(
        f'<item id="{i}" kind="{"odd" if i % 2 else "even"}"><name>item {i} &amp; co</name>'
        f"<tags>{'<tag>t</tag>' * (i % 5)}</tags></item>\n"
        for i in range(items)
    )
    return f"<?xml version='1.0'?>\n<inventory>\n{rows}</inventory>\n".encode()


def show(title: str, stats: pyslab.core.AllocatorStats) -> None:
    used = {c.slot_size: c.used_slots for c in stats.classes if c.used_slots}
    print(f"{title:<28} {stats.live_blocks:>4} live blocks {used}, "
          f"{stats.large_blocks} large ({stats.large_bytes} bytes)")


def main() -> int:
    expat = load_expat()
    if expat is None:
        print("libexpat is not installed: nothing to show")
        return 0
    data = document(20_000)
    with pyslab.SlabAllocator(policy="dict-lookup") as alloc:
        functions = pyslab.c_functions(alloc)
        suite = MemoryHandlingSuite(functions.malloc, functions.realloc, functions.free)
        parser = expat.XML_ParserCreate_MM(None, ctypes.byref(suite), None)
        if not parser:
            functions.check()  # raises what made malloc return NULL
            raise MemoryError("XML_ParserCreate_MM returned NULL")
        counts: dict[bytes, int] = {}
        depth = [0, 0]  # current, deepest

        def start(_: object, name: bytes, attributes: object) -> None:
            counts[name] = counts.get(name, 0) + 1
            depth[0] += 1
            depth[1] = max(depth)

        def end(_: object, name: bytes) -> None:
            depth[0] -= 1

        handlers = START(start), END(end)  # kept alive while the parser may call them
        expat.XML_SetElementHandler(parser, *handlers)
        chunk = 16 * 1024
        for offset in range(0, len(data), chunk):
            piece = data[offset : offset + chunk]
            if not expat.XML_Parse(parser, piece, len(piece), offset + chunk >= len(data)):
                code = expat.XML_GetErrorCode(parser)
                print(f"parse error: {expat.XML_ErrorString(code).decode()}", file=sys.stderr)
                return 1
        print(f"parsed {len(data) // 1024} KiB: {counts}, {depth[1]} levels deep")
        show("parser alive:", alloc.stats())
        expat.XML_ParserFree(parser)
        show("after XML_ParserFree:", alloc.stats())
        peaks = {c.slot_size: c.peak_used for c in alloc.stats().classes if c.peak_used}
        print(f"peak blocks per size class while parsing: {peaks}")
        functions.check()  # no call from expat failed
    return 0


if __name__ == "__main__":
    sys.exit(main())

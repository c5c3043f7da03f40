"""ctypes buffers in slab memory: install pyslab, run ordinary ctypes code, watch the slabs.

Run: python examples/ctypes_buffers.py
"""

from __future__ import annotations

import ctypes
import gc

import pyslab

libc = ctypes.CDLL(None)
libc.snprintf.restype = ctypes.c_int
libc.wcslen.restype = ctypes.c_size_t


class Pixel(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int16), ("y", ctypes.c_int16), ("rgba", ctypes.c_uint8 * 4)]


def ordinary_ctypes_code() -> list[ctypes.Array[ctypes.c_char]]:
    """Code that knows nothing of pyslab: it calls ctypes' functions as always."""
    lines = []
    for i in range(100):
        line = ctypes.create_string_buffer(48)
        libc.snprintf(line, ctypes.c_size_t(48), b"line %03d of %d", ctypes.c_int(i), 100)
        lines.append(line)
    name = ctypes.create_unicode_buffer("Grüße, 世界")
    print(f"wcslen({name.value!r}) = {libc.wcslen(name)}")
    return lines


def live(allocator: pyslab.SlabAllocator) -> str:
    stats = allocator.stats()
    used = {c.slot_size: c.used_slots for c in stats.classes if c.used_slots}
    return f"{stats.live_blocks} live blocks {used}, {stats.mapped_bytes} bytes mapped"


def main() -> None:
    with pyslab.installed(policy="dict-lookup") as alloc:
        lines = ordinary_ctypes_code()
        print(f"{lines[7].value.decode()!r} lives at {ctypes.addressof(lines[7]):#x}")
        print(f"in a slab of the installed allocator: {alloc.owns(ctypes.addressof(lines[7]))}")
        print(f"while installed: {live(alloc)}")

        # Any ctypes type, in slab memory:
        pixel = pyslab.new(Pixel, 3, 4, (255, 128, 0, 255))
        print(f"Pixel({pixel.x}, {pixel.y}, {list(pixel.rgba)}) at {ctypes.addressof(pixel):#x}")

    # Uninstalled: ctypes' own functions are back, but the buffers made meanwhile stay valid.
    print(f"\nafter uninstall, line 42 still reads {lines[42].value.decode()!r}")
    view = memoryview(lines[0])  # anything derived from a buffer keeps it alive
    del lines
    gc.collect()
    print(f"lines dropped, a memoryview of one kept: {live(alloc)}")
    del view, pixel
    print(f"everything dropped: {live(alloc)}")


if __name__ == "__main__":
    main()

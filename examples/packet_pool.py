"""A packet-buffer pool: a fixed number of packet slots, addressed by index, in slab memory.

Received packets are written straight into their slot through a view (no copy), handed to C by
address, and the slot index serves as the packet's handle until it is released, as network
drivers keep descriptor rings. When every slot is taken, ``insert`` returns None: the packet is
dropped, as a full ring drops it.

Run: python examples/packet_pool.py
"""

from __future__ import annotations

import ctypes
import zlib

import pyslab

PAYLOAD = 120  # a 128-byte Packet: four of them fit a 512-byte block of a size class
libc = ctypes.CDLL(None)
libc.memchr.restype = ctypes.c_void_p
libc.memchr.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


class Packet(ctypes.Structure):
    _fields_ = [
        ("port", ctypes.c_uint16),
        ("length", ctypes.c_uint16),
        ("checksum", ctypes.c_uint32),
        ("payload", ctypes.c_ubyte * PAYLOAD),
    ]


def receive(pool: pyslab.Slab[Packet], port: int, data: bytes) -> int | None:
    """Take a slot, fill it in place; return its index, or None when the pool is full."""
    index = pool.insert((port, len(data)))  # the header; the payload bytes are filled below
    if index is None:
        return None
    packet = pool.view(index)
    assert packet is not None
    ctypes.memmove(packet.payload, data, len(data))  # straight into slab memory
    packet.checksum = zlib.crc32(memoryview(packet.payload).cast("B")[: len(data)])
    return index


def first_newline(pool: pyslab.Slab[Packet], index: int) -> int | None:
    """Hand the packet to C by address: libc's memchr scans the payload in place."""
    packet = pool.view(index)
    assert packet is not None
    start = ctypes.addressof(packet.payload)
    found = libc.memchr(start, ord("\n"), packet.length)
    return None if found is None else found - start


def main() -> None:
    with pyslab.SlabAllocator() as allocator:
        pool = pyslab.Slab(Packet, 4, allocator=allocator)
        print(f"pool: {pool.capacity} slots of {ctypes.sizeof(Packet)} bytes at {pool.address:#x}")
        arrivals = [(53, b"dns query\n"), (80, b"GET / HTTP/1.1\r\n"), (443, b"\x16\x03\x01"),
                    (22, b"SSH-2.0-x\r\n"), (123, b"ntp")]
        handles = []
        for port, data in arrivals:
            index = receive(pool, port, data)
            print(f"  port {port:>3}: " + ("dropped (pool full)" if index is None
                                           else f"slot {index}"))
            if index is not None:
                handles.append(index)

        for index in handles:
            packet = pool.view(index)
            assert packet is not None
            print(f"  slot {index}: port {packet.port}, {packet.length} bytes, "
                  f"crc {packet.checksum:#010x}, newline at {first_newline(pool, index)}")

        done = pool.remove(handles[1])  # a copy: the slot is free again
        assert done is not None
        print(f"released slot {handles[1]} (port {done.port}); "
              f"the next packet takes it: slot {receive(pool, 8080, b'retry')}")
        print(f"{len(pool)}/{pool.capacity} slots in use; occupied: {[i for i, _ in pool]}")
        pool.close()


if __name__ == "__main__":
    main()

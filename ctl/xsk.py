"""AF_XDP sockets from Python: UMEM, fill/completion/RX rings, bind, stats.

Pure ctypes + numpy; no per-packet Python. The rings are numpy views over the
kernel's mmapped ring memory: the producer/consumer words are u32, RX
descriptors are ``{u64 addr; u32 len; u32 options}``, fill entries are u64.
x86 is TSO, so plain loads/stores through numpy give the acquire/release order
the ring protocol needs (descriptors are read before the consumer index is
published, and fill entries are written before the producer index is)."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import socket
import struct

import numpy as np

from .errors import InterfaceError

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_PGOFF_RX_RING = 0
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3
XDP_RING_NEED_WAKEUP = 1
XDP_PACKET_HEADROOM = 256

DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])
STATS_FIELDS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                "rx_fill_ring_empty_descs", "tx_ring_empty_descs")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
_libc.syscall.restype = ctypes.c_long

SYS_bpf = 321
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def xskmap_set(map_fd: int, queue: int, xsk_fd: int) -> None:
    """Put an AF_XDP socket into the program's XSKMAP at its queue index."""
    key = ctypes.c_uint32(queue)
    val = ctypes.c_uint32(xsk_fd)
    attr = _MapElemAttr(map_fd, 0, ctypes.addressof(key), ctypes.addressof(val), 0)
    if _libc.syscall(SYS_bpf, BPF_MAP_UPDATE_ELEM, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        e = ctypes.get_errno()
        raise InterfaceError(f"could not register the AF_XDP socket of queue {queue} in the XSKMAP: {os.strerror(e)}")


def _umem_alloc(size: int) -> mmap.mmap:
    """Anonymous private memory for the UMEM, backed by transparent huge pages where the
    kernel allows (madvise before the first touch): every frame is on its own 4 KiB page,
    so with small pages each packet costs a TLB miss when the writer reads it."""
    m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    # populate now (the kernel pins the pages at registration anyway)
    np.frombuffer(m, dtype=np.uint8)[::4096] = 0
    return m


class _Ring:
    """One mmapped ring: producer/consumer u32 words and an entry array."""

    def __init__(self, fd: int, pgoff: int, offs: tuple[int, int, int, int], size: int, entry: np.dtype):
        prod, cons, desc, flags = offs
        self.size = size
        self.mask = size - 1
        self.mm = mmap.mmap(fd, desc + size * entry.itemsize, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                            mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        self.producer = np.frombuffer(self.mm, dtype=np.uint32, count=1, offset=prod)
        self.consumer = np.frombuffer(self.mm, dtype=np.uint32, count=1, offset=cons)
        self.flags = np.frombuffer(self.mm, dtype=np.uint32, count=1, offset=flags)
        self.ring = np.frombuffer(self.mm, dtype=entry, count=size, offset=desc)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm, desc))

    def close(self) -> None:
        # numpy views keep exported buffers alive; drop them before unmapping
        self.producer = self.consumer = self.flags = self.ring = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:
            pass


class XskSocket:
    """An AF_XDP socket bound to (ifindex, queue) in copy mode, with its own UMEM.

    umem_frames frames of frame_size bytes (a power of two, 2048 or 4096);
    the fill ring holds every frame, the RX ring ring_size descriptors."""

    def __init__(self, ifindex: int, queue: int, frame_size: int = 4096, umem_frames: int = 4096,
                 ring_size: int = 2048, zerocopy: bool = False):
        for name, v in (("frame_size", frame_size), ("umem_frames", umem_frames), ("ring_size", ring_size)):
            if v <= 0 or v & (v - 1):
                raise InterfaceError(f"{name} must be a power of two (got {v})")
        self.ifindex, self.queue = ifindex, queue
        self.frame_size, self.nframes = frame_size, umem_frames
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        fd = self.fd = self.sock.fileno()
        try:
            self.umem = _umem_alloc(frame_size * umem_frames)
            self.umem_np = np.frombuffer(self.umem, dtype=np.uint8)
            self.umem_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.umem))
            reg = struct.pack("<QQIIII", self.umem_addr, len(self.umem), frame_size, 0, 0, 0)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_FILL_RING, struct.pack("<I", umem_frames))
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_COMPLETION_RING, struct.pack("<I", 64))
            self.sock.setsockopt(SOL_XDP, XDP_RX_RING, struct.pack("<I", ring_size))
            offs = struct.unpack("<16Q", self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, 128))
            self.rx = _Ring(fd, XDP_PGOFF_RX_RING, offs[0:4], ring_size, DESC_DTYPE)
            self.fill = _Ring(fd, XDP_UMEM_PGOFF_FILL_RING, offs[8:12], umem_frames, np.dtype("<u8"))
            # give the kernel every frame
            self.fill.ring[:] = np.arange(umem_frames, dtype=np.uint64) * frame_size
            self.fill.producer[0] = umem_frames
            flags = XDP_ZEROCOPY if zerocopy else XDP_COPY
            sa = struct.pack("<HHIII", AF_XDP, flags, ifindex, queue, 0)
            buf = ctypes.create_string_buffer(sa, len(sa))
            if _libc.bind(fd, buf, len(sa)) != 0:
                e = ctypes.get_errno()
                raise InterfaceError(f"could not bind an AF_XDP socket to ifindex {ifindex} queue {queue}: {os.strerror(e)}")
        except OSError as e:
            self.close()
            raise InterfaceError(f"AF_XDP socket setup failed on ifindex {ifindex} queue {queue}: {e}") from e
        except BaseException:
            self.close()
            raise
        self.frame_mask = ~np.uint64(frame_size - 1)

    def stats(self) -> dict[str, int]:
        raw = self.sock.getsockopt(SOL_XDP, XDP_STATISTICS, 48)
        vals = struct.unpack("<%dQ" % (len(raw) // 8), raw)
        return dict(zip(STATS_FIELDS, vals))

    def rx_available(self) -> int:
        return int((int(self.rx.producer[0]) - int(self.rx.consumer[0])) & 0xFFFFFFFF)

    def recycle(self, start: int, n: int) -> None:
        """Return the frames of RX descriptors [start, start+n) to the fill ring
        and release those descriptors (one numpy gather, no per-packet Python)."""
        if n <= 0:
            return
        idx = (np.arange(start, start + n, dtype=np.uint64) & np.uint64(self.rx.mask))
        frames = self.rx.ring["addr"][idx] & self.frame_mask
        fp = int(self.fill.producer[0])
        fidx = (np.arange(fp, fp + n, dtype=np.uint64) & np.uint64(self.fill.mask))
        self.fill.ring[fidx] = frames
        self.fill.producer[0] = (fp + n) & 0xFFFFFFFF
        self.rx.consumer[0] = (start + n) & 0xFFFFFFFF

    def close(self) -> None:
        for r in ("rx", "fill"):
            ring = getattr(self, r, None)
            if ring is not None:
                ring.close()
                setattr(self, r, None)
        try:
            self.sock.close()
        except OSError:
            pass
        um = getattr(self, "umem", None)
        if um is not None:
            self.umem_np = None
            try:
                um.close()
            except BufferError:
                pass
            self.umem = None

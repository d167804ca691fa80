"""ctypes signatures of the native helper and numpy-friendly wrappers.

    from stenoxdp.native import api
    nbytes, ndone, nbad = api.gather(umem_np, desc_np, mask, start, n, out_np, file_off, recs_np)
    recs, consumed = api.index_pcap(buf, base_off, nsec)
    recs, consumed, status = api.index_pcap(buf, base_off, nsec, with_status=True)
    meta, ethertype = api.parse(frame)

One call per batch; the C side never trusts its input (see sxdp_native.c).
"""
from __future__ import annotations

import ctypes

import numpy as np

from stenoxdp import layout

c_u8p = ctypes.c_void_p
DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])

# sxdp_index_pcap status
IDX_END = 0  # end of the buffer or a partial (incomplete) record
IDX_FULL = 1  # max_recs records produced
IDX_CORRUPT = 2  # a record with caplen > PCAP_MAX_CAPLEN: the file is damaged at `consumed`
PCAP_MAX_CAPLEN = 256 * 1024
PCAP_HDR = 16


def declare(L: ctypes.CDLL) -> None:
    u32p = ctypes.POINTER(ctypes.c_uint32)
    u64p = ctypes.POINTER(ctypes.c_uint64)
    L.sxdp_gather.argtypes = [
        c_u8p, ctypes.c_uint64, c_u8p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
        c_u8p, ctypes.c_uint64, ctypes.c_uint64, c_u8p, u32p, u32p,
    ]
    L.sxdp_gather.restype = ctypes.c_uint64
    L.sxdp_index_pcap.argtypes = [
        c_u8p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int, c_u8p, ctypes.c_uint32, u64p, u32p,
    ]
    L.sxdp_index_pcap.restype = ctypes.c_uint32
    L.sxdp_parse_one.argtypes = [c_u8p, ctypes.c_uint32, c_u8p]
    L.sxdp_parse_one.restype = ctypes.c_uint32
    L.sxdp_parse_many.argtypes = [c_u8p, c_u8p, ctypes.c_uint32, c_u8p, c_u8p]
    L.sxdp_parse_many.restype = None
    L.sxdp_abi_version.argtypes = []
    L.sxdp_abi_version.restype = ctypes.c_uint32
    abi = L.sxdp_abi_version()
    want = (layout.REC_DTYPE.itemsize << 16) | layout.META_DTYPE.itemsize
    if abi != want:
        raise RuntimeError(f"native helper layout {abi:#x} != Python mirror {want:#x}: rebuild it")


def _lib():
    from . import lib

    return lib()


def _addr(a: np.ndarray, writable: bool = False) -> int:
    if not a.flags.c_contiguous:
        raise ValueError("array must be C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError("array must be writable")
    return a.ctypes.data


def gather(umem: np.ndarray, descs: np.ndarray, mask: int, start: int, n: int, out: np.ndarray,
           file_off: int, recs: np.ndarray) -> tuple[int, int, int]:
    """Copy up to n RX descriptors' frames (ring index (start+i) & mask) into
    ``out`` as pcap records (16-byte header from the XDP metadata + frame) and
    fill one ``recs`` row (layout.REC_DTYPE) per packet.

    Returns (nbytes written, ndone descriptors consumed, nbad skipped); rows
    written = ndone - nbad. Stops early when ``out`` or ``recs`` is full.
    ``umem``/``out``: contiguous uint8 arrays (or any contiguous buffer view);
    ``descs``: the RX ring descriptor array (16-byte {addr, len, options})."""
    if recs.dtype != layout.REC_DTYPE:
        raise TypeError("recs must be an array of layout.REC_DTYPE")
    if descs.dtype.itemsize != 16:
        raise TypeError("descs must be 16-byte xdp_desc records")
    n = min(int(n), len(recs))
    if n <= 0:
        return 0, 0, 0
    done = ctypes.c_uint32(0)
    bad = ctypes.c_uint32(0)
    nbytes = _lib().sxdp_gather(
        _addr(umem), umem.nbytes, _addr(descs), int(mask), int(start) & 0xFFFFFFFF, n,
        _addr(out, True), out.nbytes, int(file_off), _addr(recs, True), ctypes.byref(done), ctypes.byref(bad),
    )
    return int(nbytes), int(done.value), int(bad.value)


def _as_u8(buf) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        a = buf.view(np.uint8).reshape(-1) if buf.dtype != np.uint8 else buf.reshape(-1)
    else:
        a = np.frombuffer(buf, dtype=np.uint8)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def index_pcap(buf, base_off: int = 0, nsec: bool = True, max_recs: int | None = None,
               with_status: bool = False):
    """Index the classic pcap records in ``buf`` (bytes, memoryview, mmap or
    uint8 array; little-endian records, no global header). ``base_off`` =
    file offset of buf[0]; ``nsec``: nanosecond timestamps (else µs).

    Returns (recs, consumed) -- recs an ndarray of layout.REC_DTYPE, consumed
    the bytes of the complete records walked -- or (recs, consumed, status)
    with ``with_status``: IDX_END (stopped at the end / a partial record),
    IDX_FULL (max_recs reached), IDX_CORRUPT (the record at base_off+consumed
    claims caplen > 256 KiB: the file is damaged there)."""
    a = _as_u8(buf)
    L = _lib()
    total = 0
    parts = []
    status = IDX_END
    pos = 0
    limit = max_recs if max_recs is not None else 1 << 62
    while True:
        remaining = a.nbytes - pos
        # a record is >= 16 bytes; frames are rarely < 42: size the batch from that
        want = min(limit - total, max(1, remaining // 58 + 1), 1 << 18)
        if want <= 0 or remaining < PCAP_HDR:
            status = IDX_FULL if want <= 0 and remaining >= PCAP_HDR else status
            break
        recs = np.zeros(want, dtype=layout.REC_DTYPE)
        consumed = ctypes.c_uint64(0)
        st = ctypes.c_uint32(0)
        got = L.sxdp_index_pcap(a.ctypes.data + pos, remaining, int(base_off) + pos, 1 if nsec else 0,
                                recs.ctypes.data, want, ctypes.byref(consumed), ctypes.byref(st))
        parts.append(recs[:got] if got * 2 >= want else recs[:got].copy())
        total += got
        pos += consumed.value
        status = int(st.value)
        if status != IDX_FULL or total >= limit:
            break
    recs = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else np.zeros(0, layout.REC_DTYPE))
    if with_status:
        return recs, pos, status
    return recs, pos


def parse(frame: bytes) -> tuple[np.void, int]:
    """(meta record of layout.META_DTYPE with the parse summary, innermost ethertype)."""
    f = np.frombuffer(bytes(frame) or b"\0", dtype=np.uint8)
    meta = np.zeros(1, dtype=layout.META_DTYPE)
    et = _lib().sxdp_parse_one(f.ctypes.data, len(frame), meta.ctypes.data)
    return meta[0], int(et)


def parse_many(frames: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Parse many frames in one call: (metas of META_DTYPE, ethertypes u16)."""
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    buf = np.frombuffer(b"".join(frames) or b"\0", dtype=np.uint8)
    metas = np.zeros(len(frames), dtype=layout.META_DTYPE)
    ets = np.zeros(len(frames), dtype=np.uint16)
    _lib().sxdp_parse_many(buf.ctypes.data, lens.ctypes.data, len(frames), metas.ctypes.data, ets.ctypes.data)
    return metas, ets

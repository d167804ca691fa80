"""Reading capture files for import: classic pcap (µs or ns, either byte
order) and pcapng (SHB/IDB/EPB/SPB, if_tsresol, either byte order). Only
Ethernet (linktype 1) is accepted: the store holds Ethernet frames.

read_frames(path) -> Frames: the whole file in memory plus per-frame arrays
(data offset into the buffer, caplen, original length, timestamp ns). The
frame bytes are never copied or altered; import writes them out unchanged.
Little-endian classic pcap -- the common case -- is walked by the native
helper in one call; other layouts are walked block by block in Python (a
loop over the file's framing, not over packet contents).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import StenoError

LINKTYPE_ETHERNET = 1


class CaptureFormatError(StenoError):
    exit_code = 2


@dataclass
class Frames:
    buf: bytes
    data_off: np.ndarray  # int64, offset of each frame's first byte in buf
    caplen: np.ndarray  # int64
    wirelen: np.ndarray  # int64
    ts_ns: np.ndarray  # int64
    fmt: str  # "pcap-ns", "pcap-us", "pcapng"
    snaplen: int = 262144
    le_pcap: bool = False  # classic little-endian pcap: each frame's 16-byte record header precedes it in buf

    def __len__(self) -> int:
        return len(self.caplen)


def _bad_link(path, lt) -> CaptureFormatError:
    return CaptureFormatError(
        f"{path}: link type {lt} is not Ethernet (1); only Ethernet captures can be imported "
        "(convert with `editcap -T ether` or capture on an Ethernet interface)"
    )


def read_frames(path: os.PathLike | str) -> Frames:
    """The file is memory-mapped (read-only), not read: imports of captures larger
    than memory work, and frames are sliced straight out of the page cache."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    if len(buf) < 4:
        raise CaptureFormatError(f"{path}: too short to be a pcap or pcapng file")
    m = buf[:4]
    if m == b"\x0a\x0d\x0d\x0a":
        return _read_pcapng(path, buf)
    for bo in ("<", ">"):
        (magic,) = struct.unpack(bo + "I", m)
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            return _read_pcap(path, buf, bo, magic == 0xA1B23C4D)
    raise CaptureFormatError(f"{path}: not a pcap or pcapng file (magic {m.hex()})")


def _read_pcap(path, buf: bytes, bo: str, nsec: bool) -> Frames:
    if len(buf) < 24:
        raise CaptureFormatError(f"{path}: truncated pcap global header")
    _, _, _, _, _, snaplen, lt = struct.unpack(bo + "IHHiIII", buf[:24])
    if (lt & 0x0FFFFFFF) != LINKTYPE_ETHERNET:
        raise _bad_link(path, lt & 0x0FFFFFFF)
    arr = None
    if bo == "<":
        arr = _walk_native(buf, nsec)
    if arr is None:
        arr = _walk_pcap_py(buf, bo, nsec)
    off, cap, wire, ts = arr
    return Frames(buf, off, cap, wire, ts, "pcap-ns" if nsec else "pcap-us", snaplen or 262144, le_pcap=bo == "<")


def _walk_native(buf: bytes, nsec: bool):
    try:
        from ..native import api
    except Exception:
        return None
    try:
        recs, consumed = api.index_pcap(memoryview(buf)[24:], 24, nsec)
    except Exception:
        return None
    if consumed != len(buf) - 24:
        return None  # a truncated or damaged tail: the Python walk decides what to keep
    off = recs["offset"].astype(np.int64) + 16
    return off, recs["caplen"].astype(np.int64), recs["wirelen"].astype(np.int64), recs["ts_ns"].astype(np.int64)


def _walk_pcap_py(buf: bytes, bo: str, nsec: bool):
    n = len(buf)
    pos = 24
    offs, caps, wires, tss = [], [], [], []
    hdr = struct.Struct(bo + "IIII")
    mult = 1 if nsec else 1000
    while pos + 16 <= n:
        sec, frac, cap, wire = hdr.unpack_from(buf, pos)
        if pos + 16 + cap > n:
            break  # truncated last record: dropped, like tcpdump
        offs.append(pos + 16)
        caps.append(cap)
        wires.append(wire)
        tss.append(sec * 1_000_000_000 + frac * mult)
        pos += 16 + cap
    return (np.array(offs, np.int64), np.array(caps, np.int64), np.array(wires, np.int64), np.array(tss, np.int64))


def _read_pcapng(path, buf: bytes) -> Frames:
    n = len(buf)
    pos = 0
    bo = "<"
    ifaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
    offs, caps, wires, tss = [], [], [], []
    snap = 262144
    while pos + 12 <= n:
        btype = struct.unpack_from(bo + "I", buf, pos)[0]
        if btype == 0x0A0D0D0A:  # SHB: byte order from its magic
            bom = buf[pos + 8 : pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                bo = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                bo = ">"
            else:
                raise CaptureFormatError(f"{path}: bad pcapng byte-order magic at offset {pos}")
            ifaces = []
        blen = struct.unpack_from(bo + "I", buf, pos + 4)[0]
        if blen < 12 or blen % 4 or pos + blen > n:
            break  # truncated or corrupt tail: stop like tshark does
        body = pos + 8
        if btype == 1:  # IDB
            lt, _, snaplen = struct.unpack_from(bo + "HHI", buf, body)
            tps = 1_000_000
            o = body + 8
            end = pos + blen - 4
            while o + 4 <= end:
                code, olen = struct.unpack_from(bo + "HH", buf, o)
                if code == 0:
                    break
                if code == 9 and olen >= 1:  # if_tsresol
                    r = buf[o + 4]
                    tps = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
                o += 4 + ((olen + 3) & ~3)
            ifaces.append((lt, tps))
            if snaplen:
                snap = snaplen
        elif btype == 6:  # EPB
            iid, th, tl, cap, wire = struct.unpack_from(bo + "IIIII", buf, body)
            if iid >= len(ifaces):
                raise CaptureFormatError(f"{path}: packet block at offset {pos} names interface {iid}, not described")
            lt, tps = ifaces[iid]
            if lt != LINKTYPE_ETHERNET:
                raise _bad_link(path, lt)
            ticks = (th << 32) | tl
            if body + 20 + cap > pos + blen - 4:
                raise CaptureFormatError(f"{path}: packet block at offset {pos} claims {cap} bytes, more than it holds")
            offs.append(body + 20)
            caps.append(cap)
            wires.append(wire)
            tss.append(ticks * 1_000_000_000 // tps if tps != 1_000_000_000 else ticks)
        elif btype == 3:  # SPB: no timestamp; caplen from the block length
            if not ifaces:
                raise CaptureFormatError(f"{path}: simple packet block before any interface description")
            lt, _ = ifaces[0]
            if lt != LINKTYPE_ETHERNET:
                raise _bad_link(path, lt)
            (wire,) = struct.unpack_from(bo + "I", buf, body)
            cap = min(wire, blen - 16, snap or wire)
            offs.append(body + 4)
            caps.append(cap)
            wires.append(wire)
            tss.append(tss[-1] if tss else 0)
        elif btype == 2:  # obsolete packet block
            iid, _drops, th, tl, cap, wire = struct.unpack_from(bo + "HHIIII", buf, body)
            lt, tps = ifaces[iid] if iid < len(ifaces) else (LINKTYPE_ETHERNET, 1_000_000)
            if lt != LINKTYPE_ETHERNET:
                raise _bad_link(path, lt)
            if body + 20 + cap > pos + blen - 4:
                raise CaptureFormatError(f"{path}: packet block at offset {pos} claims {cap} bytes, more than it holds")
            offs.append(body + 20)
            caps.append(cap)
            wires.append(wire)
            tss.append(((th << 32) | tl) * 1_000_000_000 // tps)
        pos += blen
    return Frames(buf, np.array(offs, np.int64), np.array(caps, np.int64), np.array(wires, np.int64),
                  np.array(tss, np.int64), "pcapng", snap)


def build_records(frames: Frames, sel: np.ndarray | None = None) -> bytes:
    """Nanosecond pcap records (16-byte header + frame bytes) of the selected
    frames, in order, built with numpy (no per-frame Python)."""
    idx = np.arange(len(frames)) if sel is None else np.asarray(sel)
    cap = frames.caplen[idx]
    n = len(idx)
    if n == 0:
        return b""
    if frames.le_pcap and np.all(np.diff(idx) == 1):
        # a run of little-endian pcap records is already the output, but for the
        # timestamp fraction of a µs file: one slice, patched in numpy
        doff = frames.data_off[idx]
        if n == 1 or np.all(doff[1:] == doff[:-1] + cap[:-1] + 16):
            lo, hi = int(doff[0]) - 16, int(doff[-1] + cap[-1])
            if frames.fmt == "pcap-ns":
                return frames.buf[lo:hi]
            out = np.frombuffer(bytearray(frames.buf[lo:hi]), np.uint8)
            frac = (frames.ts_ns[idx] % 1_000_000_000).astype("<u4").view(np.uint8).reshape(n, 4)
            pos = (doff - 16 - lo + 4)[:, None] + np.arange(4)[None, :]
            out[pos.ravel()] = frac.ravel()
            return out.tobytes()
    rec_len = cap + 16
    out_off = np.concatenate([[0], np.cumsum(rec_len)[:-1]])
    total = int(rec_len.sum())
    out = np.empty(total, np.uint8)
    hdr = np.empty(n, dtype=[("sec", "<u4"), ("nsec", "<u4"), ("cap", "<u4"), ("wire", "<u4")])
    ts = frames.ts_ns[idx]
    hdr["sec"] = ts // 1_000_000_000
    hdr["nsec"] = ts % 1_000_000_000
    hdr["cap"] = cap
    hdr["wire"] = frames.wirelen[idx]
    hb = hdr.view(np.uint8).reshape(n, 16)
    pos = out_off[:, None] + np.arange(16)[None, :]
    out[pos.ravel()] = hb.ravel()
    src = np.frombuffer(frames.buf, np.uint8)
    data_total = int(cap.sum())
    if data_total:
        # gather all frame bytes: for byte k of frame i, source = data_off[i] + k
        starts_out = np.repeat(out_off + 16, cap)
        starts_src = np.repeat(frames.data_off[idx], cap)
        within = np.arange(data_total) - np.repeat(np.concatenate([[0], np.cumsum(cap)[:-1]]), cap)
        out[starts_out + within] = src[starts_src + within]
    return out.tobytes()

"""Index key encodings: the ONE module that says what an index key and value
look like. The indexer (index.py) writes them, the query engine (engine.py)
reads them; nothing else builds keys by hand.

Key  = one type byte + a big-endian value (so a prefix range = a value range):

    0x00 + name         metadata (see META_*), values below
    0x01 + u8           IP protocol (after IPv6 extension headers), IPv4 or IPv6
    0x02 + u16          TCP/UDP source port       (only packets with F_PORTS:
    0x03 + u16          TCP/UDP destination port   non-first fragments get none)
    0x04 + 4 bytes      IPv4 source
    0x05 + 4 bytes      IPv4 destination
    0x06 + 16 bytes     IPv6 source
    0x07 + 16 bytes     IPv6 destination
    0x08 + u16          VLAN id, any kept tag (the first two tags: outer and inner)
    0x09 + u32          MPLS label (the first label)
    0x0a + u8           address family: 4 (F_IPV4) or 6 (F_IPV6)
    0x0b                reserved (flag keys: measured as 8 % of the index, no query used them)
    0x10 + u32          chunk N of the per-packet table (offsets and timestamps of
                        packets N*CHUNK .. N*CHUNK+CHUNK-1, in file order)

Positions ("ordinals") are the packet's index in its file (0-based, file order).
A postings value is the sorted ordinal array, delta-encoded, stored as a
numpy array of the narrowest unsigned width that holds the largest delta,
the first ordinal either inline or (F_FIRST) as a u32 ahead of the deltas,
whichever is shorter (see encode_positions); RocksDB compresses the blocks
(zstd) on top. Chunk values keep the first offset/timestamp in a fixed
header so the deltas get their own narrow width.

The chunk table maps ordinal -> (file offset of the pcap record header,
timestamp ns). It is the universe for time-only and `not` queries, and,
with the META_CHUNK_TS summary (min/max ts of each chunk), the time-seek table:
a time-bounded query decodes only the chunks whose range overlaps.

Format version: META_VERSION holds a u32 BE; readers refuse any other value
with IndexFormatError.
"""
from __future__ import annotations

import struct

import numpy as np

FORMAT_VERSION = 2  # 2: first values kept apart from the deltas (F_FIRST, chunk header)
CHUNK = 4096  # packets per chunk of the per-packet table

T_META = 0x00
T_PROTO = 0x01
T_SPORT = 0x02
T_DPORT = 0x03
T_SRC4 = 0x04
T_DST4 = 0x05
T_SRC6 = 0x06
T_DST6 = 0x07
T_VLAN = 0x08
T_MPLS = 0x09
T_FAMILY = 0x0A
T_FLAG = 0x0B
T_CHUNK = 0x10

TYPE_NAMES = {
    T_META: "meta", T_PROTO: "proto", T_SPORT: "sport", T_DPORT: "dport", T_SRC4: "src4",
    T_DST4: "dst4", T_SRC6: "src6", T_DST6: "dst6", T_VLAN: "vlan", T_MPLS: "mpls",
    T_FAMILY: "family", T_FLAG: "flag", T_CHUNK: "chunk",
}
# width in bytes of the value part of each key type
VALUE_LEN = {T_PROTO: 1, T_SPORT: 2, T_DPORT: 2, T_SRC4: 4, T_DST4: 4, T_SRC6: 16, T_DST6: 16,
             T_VLAN: 2, T_MPLS: 4, T_FAMILY: 1, T_FLAG: 1, T_CHUNK: 4}

META_VERSION = b"\x00version"  # u32 BE
META_COUNT = b"\x00count"  # u64 BE: packets in the file
META_FIRST_TS = b"\x00first_ts"  # u64 BE ns (minimum over the file)
META_LAST_TS = b"\x00last_ts"  # u64 BE ns (maximum over the file)
META_BYTES = b"\x00bytes"  # u64 BE: packet file bytes covered
META_SORTED = b"\x00sorted"  # u8: 1 if timestamps are non-decreasing in file order
META_CHUNK_TS = b"\x00chunk_ts"  # u64 LE array [min0, max0, min1, max1, ...]
META_KEYS = (META_VERSION, META_COUNT, META_FIRST_TS, META_LAST_TS, META_BYTES, META_SORTED, META_CHUNK_TS)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def get_u64(b: bytes) -> int:
    return struct.unpack(">Q", b)[0]


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def get_u32(b: bytes) -> int:
    return struct.unpack(">I", b)[0]


def key(ktype: int, value: bytes) -> bytes:
    return bytes([ktype]) + value


def proto_key(p: int) -> bytes:
    return bytes([T_PROTO, p & 0xFF])


def port_key(port: int, src: bool) -> bytes:
    return bytes([T_SPORT if src else T_DPORT]) + struct.pack(">H", port)


def addr_key(addr: bytes, src: bool) -> bytes:
    if len(addr) == 4:
        return bytes([T_SRC4 if src else T_DST4]) + addr
    if len(addr) == 16:
        return bytes([T_SRC6 if src else T_DST6]) + addr
    raise ValueError(f"address of {len(addr)} bytes")


def addr_range(addr: bytes, prefix: int, src: bool) -> tuple[bytes, bytes]:
    """[lo, hi] inclusive key range for addr/prefix."""
    n = len(addr)
    a = int.from_bytes(addr, "big")
    bits = n * 8
    host = (1 << (bits - prefix)) - 1 if prefix < bits else 0
    lo = (a & ~host) & ((1 << bits) - 1)
    hi = lo | host
    t = (T_SRC4 if src else T_DST4) if n == 4 else (T_SRC6 if src else T_DST6)
    return bytes([t]) + lo.to_bytes(n, "big"), bytes([t]) + hi.to_bytes(n, "big")


def port_range(lo: int, hi: int, src: bool) -> tuple[bytes, bytes]:
    t = T_SPORT if src else T_DPORT
    return bytes([t]) + struct.pack(">H", lo), bytes([t]) + struct.pack(">H", hi)


def vlan_key(vid: int) -> bytes:
    return bytes([T_VLAN]) + struct.pack(">H", vid & 0xFFFF)


def mpls_key(label: int) -> bytes:
    return bytes([T_MPLS]) + struct.pack(">I", label & 0xFFFFFFFF)


def family_key(v: int) -> bytes:
    return bytes([T_FAMILY, v])


def flag_key(bit: int) -> bytes:
    return bytes([T_FLAG, bit])


def chunk_key(n: int) -> bytes:
    return bytes([T_CHUNK]) + struct.pack(">I", n)


# ---- array packing ------------------------------------------------------------
# value = 1 byte code + raw little-endian array. code: low nibble = width in
# bytes (1, 2, 4, 8), bit 0x10 = signed. Arrays of deltas are stored this way.
def _width_u(mx: int) -> int:
    return 1 if mx < 1 << 8 else 2 if mx < 1 << 16 else 4 if mx < 1 << 32 else 8


def _width_s(mn: int, mx: int) -> int:
    for w in (1, 2, 4):
        lim = 1 << (8 * w - 1)
        if -lim <= mn and mx < lim:
            return w
    return 8


def pack_array_u(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype=np.uint64)
    w = _width_u(int(a.max())) if a.size else 1
    return bytes([w]) + a.astype(f"<u{w}").tobytes()


def pack_array_s(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype=np.int64)
    w = _width_s(int(a.min()), int(a.max())) if a.size else 1
    return bytes([0x10 | w]) + a.astype(f"<i{w}").tobytes()


def unpack_array(b: bytes | memoryview, off: int = 0, count: int | None = None) -> tuple[np.ndarray, int]:
    """Decode one packed array starting at b[off]; return (array as int64/uint64, end offset).
    count=None means the array runs to the end of b."""
    code = b[off]
    w = code & 0x0F
    signed = bool(code & 0x10)
    if w not in (1, 2, 4, 8):
        raise ValueError(f"bad array code {code:#x}")
    n = (len(b) - off - 1) // w if count is None else count
    dt = np.dtype(f"<i{w}" if signed else f"<u{w}")
    arr = np.frombuffer(b, dtype=dt, count=n, offset=off + 1)
    return arr.astype(np.int64 if signed else np.uint64), off + 1 + n * w


F_FIRST = 0x20  # code bit: the first ordinal follows the code as u32 LE; the array holds the deltas after it


def encode_positions(pos: np.ndarray) -> bytes:
    """Sorted unique ordinals -> value bytes: code byte (width | F_FIRST?), then
    either [first, deltas...] at one width, or first as u32 + deltas at their
    own (narrower) width -- whichever is shorter."""
    pos = np.asarray(pos, dtype=np.int64)
    if pos.size == 0:
        return bytes([1])
    d = np.diff(pos)
    w_all = _width_u(int(pos[0]) if not d.size else max(int(pos[0]), int(d.max())))
    w_rest = _width_u(int(d.max())) if d.size else 1
    if 4 + d.size * w_rest < pos.size * w_all:
        return bytes([F_FIRST | w_rest]) + struct.pack("<I", int(pos[0])) + d.astype(f"<u{w_rest}").tobytes()
    full = np.concatenate([pos[:1], d])
    return bytes([w_all]) + full.astype(f"<u{w_all}").tobytes()


def decode_positions(b: bytes) -> np.ndarray:
    code = b[0]
    w = code & 0x0F
    if code & F_FIRST:
        first = struct.unpack_from("<I", b, 1)[0]
        d = np.frombuffer(b, f"<u{w}", offset=5).astype(np.int64)
        out = np.empty(len(d) + 1, np.int64)
        out[0] = first
        np.cumsum(d, out=out[1:])
        out[1:] += first
        return out
    d = np.frombuffer(b, f"<u{w}", offset=1).astype(np.int64)
    return np.cumsum(d)


def decode_positions_union(values: list[bytes]) -> np.ndarray:
    """Sorted unique union of many postings values, decoded in a few numpy
    passes (grouped by code; a segmented cumulative sum) instead of one
    decode per key -- range scans (net, portrange) touch thousands of keys."""
    if not values:
        return np.empty(0, np.int64)
    by_code: dict[int, list[bytes]] = {}
    for v in values:
        by_code.setdefault(v[0], []).append(v)
    out = []
    for code, vs in by_code.items():
        w = code & 0x0F
        hdr = 5 if code & F_FIRST else 1
        lens = np.fromiter((len(v) for v in vs), np.int64, len(vs))
        counts = (lens - hdr) // w
        body = b"".join(v[hdr:] for v in vs)
        d = np.frombuffer(body, dtype=f"<u{w}").astype(np.int64)
        if hdr == 5:
            firsts = np.frombuffer(b"".join(v[1:5] for v in vs), "<u4").astype(np.int64)
            full = np.empty(len(d) + len(vs), np.int64)
            seg0 = np.cumsum(counts + 1) - (counts + 1)
            m = np.ones(len(full), bool)
            m[seg0] = False
            full[seg0] = firsts
            full[m] = d
            d, counts = full, counts + 1
        c = np.cumsum(d)
        ends = np.cumsum(counts)
        starts = ends - counts
        before = np.where(starts > 0, c[np.maximum(starts - 1, 0)], 0)
        c -= np.repeat(before, counts)
        out.append(c)
    return np.unique(np.concatenate(out))


def encode_chunk(offsets: np.ndarray, ts: np.ndarray, end: int) -> bytes:
    """One chunk of the per-packet table: count (u32 LE), end (u64 LE: the file
    offset just past the chunk's last record, so every record's length is the
    next offset minus its own), offsets (first + deltas), timestamps (first +
    signed deltas)."""
    n = len(offsets)
    o = np.asarray(offsets, dtype=np.int64)
    t = np.asarray(ts, dtype=np.int64)
    head = struct.pack("<IQQq", n, end, int(o[0]) if n else 0, int(t[0]) if n else 0)
    return head + pack_array_u(np.diff(o)) + pack_array_s(np.diff(t))


def decode_chunk(b: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (offsets, timestamps, end offset)."""
    n, end, o0, t0 = struct.unpack_from("<IQQq", b, 0)
    od, off = unpack_array(b, 28, max(n - 1, 0))
    td, _ = unpack_array(b, off, max(n - 1, 0))
    o = np.empty(n, np.int64)
    t = np.empty(n, np.int64)
    if n:
        o[0], t[0] = o0, t0
        np.cumsum(od.astype(np.int64), out=o[1:])
        o[1:] += o0
        np.cumsum(td, out=t[1:])
        t[1:] += t0
    return o, t, end


def encode_chunk_ts(mins: np.ndarray, maxs: np.ndarray) -> bytes:
    a = np.empty(2 * len(mins), "<u8")
    a[0::2] = mins
    a[1::2] = maxs
    return a.tobytes()


def decode_chunk_ts(b: bytes) -> tuple[np.ndarray, np.ndarray]:
    a = np.frombuffer(b, "<u8").astype(np.int64)
    return a[0::2], a[1::2]


def describe(k: bytes) -> str:
    """Human-readable form of a key (for debugging and `stenoctl` dumps)."""
    if not k:
        return "<empty>"
    t, v = k[0], k[1:]
    name = TYPE_NAMES.get(t, f"type{t:#x}")
    if t == T_META:
        return f"meta:{v.decode(errors='replace')}"
    if t in (T_SRC4, T_DST4) and len(v) == 4:
        return f"{name}:{'.'.join(str(x) for x in v)}"
    if t in (T_SRC6, T_DST6) and len(v) == 16:
        import ipaddress

        return f"{name}:{ipaddress.IPv6Address(v)}"
    return f"{name}:{int.from_bytes(v, 'big')}"

"""Build and read the per-packet-file index (one RocksDB database per packet
file, keys from indexer/keys.py).

Build: sxdp_rec records (the .rec sidecar, or records the native helper makes
from the pcap) -> postings grouped in numpy (lexsort per key type, one Python
step per DISTINCT key, never per packet) -> one sorted SST file written with
SstFileWriter -> ingested into a fresh DB in a hidden temp dir -> renamed to
<stamp>.idx. Readers open read-only and check the format version.

Layout choice (measured on one 33K-packet file with 57K distinct keys): one
SST written with SstFileWriter (0.05 s) and ingested into a fresh DB (0.08 s)
= 417 KB; the same entries put() into a DB and flushed = 0.33 s and 549 KB
(the WAL stays). The info LOG and OPTIONS dump (~30 KB) are deleted after the
build: readers pass their options.

Measured index size (zstd blocks, 32 KiB):
  * 1M IMIX packets (64/576/1500 at 7:4:1, 354 B avg, 5000 zipf flows, 80 kpps):
    8.3 B/packet = 2.24 % of packet bytes.
    Stenographer's layout (u32 offsets under proto, 2 ports, 2 addresses, no
    compression) would be >= 20 B/packet = 5.6 % there.
  * tests/corpus/varied.pcap (real lab traffic, 508 B avg): 0.95 %.
  * 100-byte frames with random addresses and ports (worst case: a new key per
    packet): 12.5-14 B/packet.
The chunk table (per-packet offset + exact ns timestamp, which makes `not`,
time-only and exact before/after answerable from the index) is 2.9 of the
8.3 B/packet there; the postings are the rest. Build: 0.6-1.1 s per 1M packets.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from .. import layout
from ..errors import IndexFormatError, StoreError
from ..store import fsync_dir
from . import keys as K

log = logging.getLogger("stenoxdp.indexer")

_BLOCK_SIZE = 32 * 1024


def _rocks():
    import rocksdict

    return rocksdict


def _options(write: bool):
    r = _rocks()
    o = r.Options(raw_mode=True)
    if write:
        o.create_if_missing(True)
        o.set_compression_type(r.DBCompressionType.zstd())
        bb = r.BlockBasedOptions()
        bb.set_block_size(_BLOCK_SIZE)
        o.set_block_based_table_factory(bb)
    o.set_keep_log_file_num(1)
    o.set_max_log_file_size(64 * 1024)
    return o


# ---- postings ------------------------------------------------------------------
def _be_cols(vals: np.ndarray, width: int) -> list[np.ndarray]:
    """vals: (n, width) uint8 big-endian bytes -> list of u64 columns (most significant first)."""
    cols = []
    for s in range(0, width, 8):
        part = vals[:, s : s + 8]
        w = part.shape[1]
        v = np.zeros(len(vals), np.uint64)
        for j in range(w):
            v = (v << np.uint64(8)) | part[:, j].astype(np.uint64)
        cols.append(v)
    return cols


def _type_columns(recs: np.ndarray):
    """Yield (type byte, value width, ordinals, values) per key type: values are
    an integer array for widths <= 4 bytes, an (n, 16) uint8 matrix for IPv6."""
    flags = recs["flags"]
    ordn = np.arange(len(recs), dtype=np.uint64)
    ip4 = (flags & layout.F_IPV4) != 0
    ip6 = (flags & layout.F_IPV6) != 0
    ip = ip4 | ip6
    ports = ((flags & layout.F_PORTS) != 0) & ((flags & layout.F_NONFIRST_FRAG) == 0)

    yield K.T_PROTO, 1, ordn[ip], recs["proto"][ip]
    yield K.T_SPORT, 2, ordn[ports], recs["sport"][ports]
    yield K.T_DPORT, 2, ordn[ports], recs["dport"][ports]
    for t, f in ((K.T_SRC4, "src"), (K.T_DST4, "dst")):
        a = np.ascontiguousarray(recs[f][:, :4][ip4]).view(">u4").reshape(-1)
        yield t, 4, ordn[ip4], a
    yield K.T_SRC6, 16, ordn[ip6], recs["src"][ip6]
    yield K.T_DST6, 16, ordn[ip6], recs["dst"][ip6]
    nv = recs["n_vlan"]
    vo, vv = [], []
    for i in range(layout.META_VLANS):
        m = nv > i
        vo.append(ordn[m])
        vv.append(recs["vlan"][:, i][m] & 0x0FFF)
    yield K.T_VLAN, 2, np.concatenate(vo), np.concatenate(vv)
    m = recs["n_mpls"] > 0
    yield K.T_MPLS, 4, ordn[m], recs["mpls"][m]
    yield K.T_FAMILY, 1, ordn[ip], np.where(ip4[ip], 4, 6)


def _encode_groups(t: int, width: int, ordn: np.ndarray, kb: bytes, starts: np.ndarray, out: list) -> None:
    """Sorted ordinals split into groups at starts (one group per key, whose value
    bytes are kb[i*width:(i+1)*width]) -> (key, delta array) entries appended to out."""
    ordn = ordn.astype(np.int64)
    ends = np.append(starts[1:], len(ordn))
    d = np.empty(len(ordn), np.int64)
    d[0] = ordn[0]
    d[1:] = ordn[1:] - ordn[:-1]
    d[starts] = ordn[starts]
    counts = ends - starts
    mx = np.maximum.reduceat(d, starts)
    d0 = d.copy()
    d0[starts] = 0
    mx_rest = np.maximum.reduceat(d0, starts)

    def wsel(m):
        return np.where(m < 1 << 8, 1, np.where(m < 1 << 16, 2, 4))

    w_all, w_rest = wsel(mx), wsel(mx_rest)
    sep = 4 + (counts - 1) * w_rest < counts * w_all  # first ordinal as u32 + narrower deltas
    wcode = np.where(sep, w_rest, w_all)
    tb = bytes([t])
    gval: list = [None] * len(starts)
    elem_w = np.repeat(wcode, counts)
    elem_sep = np.repeat(sep, counts)
    is_first = np.zeros(len(d), bool)
    is_first[starts] = True
    stored = ~(elem_sep & is_first)  # a separated first ordinal is not in the array
    nstored = counts - sep
    firsts = ordn[starts].tolist()
    for w in (1, 2, 4):  # one cast per width class, then byte slices per key
        gsel = np.flatnonzero(wcode == w)
        if len(gsel) == 0:
            continue
        data = d[(elem_w == w) & stored].astype(f"<u{w}").tobytes()
        bend = np.cumsum(nstored[gsel] * w)
        bstart = bend - nstored[gsel] * w
        pre = bytes([w])
        pre_sep = K.F_FIRST | w
        for gi, bs, be, sp in zip(gsel.tolist(), bstart.tolist(), bend.tolist(), sep[gsel].tolist()):
            if sp:
                gval[gi] = bytes([pre_sep]) + struct.pack("<I", firsts[gi]) + data[bs:be]
            else:
                gval[gi] = pre + data[bs:be]
    out.extend((tb + kb[i * width : (i + 1) * width], v) for i, v in enumerate(gval))


def postings(recs: np.ndarray) -> list[tuple[bytes, bytes]]:
    """All (key, encoded positions) pairs of a records array, sorted by key."""
    out: list[tuple[bytes, bytes]] = []
    for t, width, ordn, vals in _type_columns(recs):
        if len(ordn) == 0:
            continue
        if width <= 4:
            # one u64 sort: value in the high 32 bits, ordinal in the low 32
            k = (vals.astype(np.uint64) << np.uint64(32)) | ordn
            k.sort()
            keep = np.ones(len(k), bool)
            keep[1:] = k[1:] != k[:-1]  # same key twice in one packet (QinQ 10/10)
            if not keep.all():
                k = k[keep]
            v = k >> np.uint64(32)
            o = k & np.uint64(0xFFFFFFFF)
            change = np.ones(len(k), bool)
            change[1:] = v[1:] != v[:-1]
            starts = np.flatnonzero(change)
            kb = v[starts].astype(f">u{width}").tobytes()
            _encode_groups(t, width, o, kb, starts, out)
            continue
        vals = np.ascontiguousarray(vals, dtype=np.uint8)
        cols = _be_cols(vals, width)
        order = np.lexsort([ordn] + cols[::-1])
        ordn = ordn[order]
        cols = [c[order] for c in cols]
        change = np.zeros(len(ordn), bool)
        change[0] = True
        for c in cols:
            change[1:] |= c[1:] != c[:-1]
        starts = np.flatnonzero(change)
        kb = vals[order][starts].tobytes()
        _encode_groups(t, width, ordn, kb, starts, out)
    return out


def table_entries(recs: np.ndarray, file_size: int | None = None) -> list[tuple[bytes, bytes]]:
    """Chunk table + metadata entries."""
    n = len(recs)
    off = recs["offset"].astype(np.int64)
    ts = recs["ts_ns"].astype(np.int64)
    ends = off + 16 + recs["caplen"].astype(np.int64)
    out = []
    mins, maxs = [], []
    for c, s in enumerate(range(0, n, K.CHUNK)):
        e = min(n, s + K.CHUNK)
        out.append((K.chunk_key(c), K.encode_chunk(off[s:e], ts[s:e], int(ends[e - 1]))))
        mins.append(int(ts[s:e].min()))
        maxs.append(int(ts[s:e].max()))
    total = int(ends.max()) if n else 24
    meta = [
        (K.META_VERSION, K.u32(K.FORMAT_VERSION)),
        (K.META_COUNT, K.u64(n)),
        (K.META_FIRST_TS, K.u64(int(ts.min()) if n else 0)),
        (K.META_LAST_TS, K.u64(int(ts.max()) if n else 0)),
        (K.META_BYTES, K.u64(file_size if file_size is not None else total)),
        (K.META_SORTED, bytes([1 if n < 2 or bool(np.all(ts[1:] >= ts[:-1])) else 0])),
        (K.META_CHUNK_TS, K.encode_chunk_ts(np.array(mins, np.int64), np.array(maxs, np.int64))),
    ]
    return meta + out


def build_index(recs: np.ndarray, idx_path: os.PathLike | str, file_size: int | None = None) -> int:
    """Write the index of one packet file to idx_path (a DB directory) atomically:
    build in a hidden temp dir next to it, then rename. Returns the index bytes."""
    r = _rocks()
    idx_path = Path(idx_path)
    idx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = idx_path.with_name("." + idx_path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sst = tmp / "ingest.sst"  # inside the temp dir: salvage removes it with the dir after a crash
    tab = table_entries(recs, file_size)
    # already in key order: meta (0x00), postings by type (0x01..0x0a, each sorted), chunks (0x10)
    meta = sorted(e for e in tab if e[0][0] == K.T_META)
    entries = meta + postings(recs) + [e for e in tab if e[0][0] == K.T_CHUNK]
    o = _options(True)
    w = r.SstFileWriter(o)
    w.open(str(sst))
    for k, v in entries:
        w[k] = v
    w.finish()
    db = r.Rdict(str(tmp), o)
    try:
        io = r.IngestExternalFileOptions()
        io.set_move_files(True)
        db.ingest_external_file([str(sst)], io)
    finally:
        db.close()
    if sst.exists():
        sst.unlink()
    # the info log and the options dump are not needed to open the DB (readers pass
    # their options); they are ~30 KB per file, more than a small file's index
    for p in tmp.iterdir():
        if p.name.startswith(("LOG", "OPTIONS-")):
            p.unlink()
    if idx_path.exists():
        shutil.rmtree(idx_path)
    fsync_dir(tmp)
    os.replace(tmp, idx_path)
    fsync_dir(idx_path.parent)  # the rename is durable before the caller deletes the .rec
    return index_bytes(idx_path)


def index_bytes(idx_path: os.PathLike | str, sst_only: bool = False) -> int:
    total = 0
    for p in Path(idx_path).iterdir():
        if p.is_file() and (not sst_only or p.suffix == ".sst"):
            total += p.stat().st_size
    return total


# ---- reading -------------------------------------------------------------------
class IndexReader:
    """A read-only view of one index. Raises IndexFormatError for an unknown
    version and StoreError for a missing or unreadable index."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"index {self.path} is missing; run `stenoctl reindex` to rebuild it")
        r = _rocks()
        try:
            self.db = r.Rdict(str(self.path), _options(False), access_type=r.AccessType.read_only())
        except Exception as e:  # rocksdb raises plain Exceptions
            raise StoreError(f"index {self.path} cannot be opened ({e}); run `stenoctl reindex` to rebuild it") from None
        try:
            v = self.db.get(K.META_VERSION)
            if v is None or len(v) != 4:
                raise IndexFormatError(f"index {self.path} has no format version record; run `stenoctl reindex`")
            ver = K.get_u32(v)
            if ver != K.FORMAT_VERSION:
                raise IndexFormatError(
                    f"index {self.path} has format version {ver}, this stenoxdp reads version "
                    f"{K.FORMAT_VERSION}; run `stenoctl reindex` (or upgrade stenoxdp)"
                )
            self.count = K.get_u64(self._must(K.META_COUNT))
            self.first_ts = K.get_u64(self._must(K.META_FIRST_TS))
            self.last_ts = K.get_u64(self._must(K.META_LAST_TS))
            self.file_bytes = K.get_u64(self._must(K.META_BYTES))
            self.sorted = self._must(K.META_SORTED) == b"\x01"
            self.chunk_min, self.chunk_max = K.decode_chunk_ts(self._must(K.META_CHUNK_TS))
        except Exception:
            self.db.close()
            raise
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}

    def _must(self, k: bytes) -> bytes:
        v = self.db.get(k)
        if v is None:
            raise IndexFormatError(f"index {self.path} lacks {K.describe(k)}; run `stenoctl reindex`")
        return v

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def all(self) -> np.ndarray:
        return np.arange(self.count, dtype=np.int64)

    def get(self, key: bytes) -> np.ndarray:
        v = self.db.get(key)
        if v is None:
            return np.empty(0, np.int64)
        return K.decode_positions(v)

    def range(self, lo: bytes, hi: bytes) -> np.ndarray:
        """Union of the postings of every key in [lo, hi] (inclusive)."""
        if lo == hi:
            return self.get(lo)
        it = self.db.iter()
        it.seek(lo)
        vals = []
        while it.valid():
            if it.key() > hi:
                break
            vals.append(it.value())
            it.next()
        del it
        if len(vals) == 1:
            return K.decode_positions(vals[0])
        return K.decode_positions_union(vals)

    def chunk(self, c: int) -> tuple[np.ndarray, np.ndarray, int]:
        got = self._chunks.get(c)
        if got is None:
            v = self.db.get(K.chunk_key(c))
            if v is None:
                raise IndexFormatError(f"index {self.path} lacks chunk {c}; run `stenoctl reindex`")
            got = K.decode_chunk(v)
            self._chunks[c] = got
        return got

    def table(self, ordn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, ts_ns, record lengths incl. the 16-byte header) of the given ordinals."""
        ordn = np.asarray(ordn, np.int64)
        off = np.empty(len(ordn), np.int64)
        ts = np.empty(len(ordn), np.int64)
        ln = np.empty(len(ordn), np.int64)
        if len(ordn) == 0:
            return off, ts, ln
        cidx = ordn // K.CHUNK
        bounds = np.flatnonzero(np.diff(cidx)) + 1 if np.all(np.diff(ordn) >= 0) else None
        if bounds is None:
            o = np.argsort(ordn, kind="stable")
            a, b, c = self.table(ordn[o])
            off[o], ts[o], ln[o] = a, b, c
            return off, ts, ln
        starts = np.concatenate([[0], bounds])
        ends = np.append(bounds, len(ordn))
        for s, e in zip(starts.tolist(), ends.tolist()):
            c = int(cidx[s])
            co, ct, cend = self.chunk(c)
            local = ordn[s:e] - c * K.CHUNK
            nxt = np.append(co[1:], cend)
            off[s:e] = co[local]
            ts[s:e] = ct[local]
            ln[s:e] = nxt[local] - co[local]
        return off, ts, ln

    def time_range(self, lo: int | None, hi: int | None) -> np.ndarray:
        """Ordinals with lo <= ts < hi (None = open), exact, via the chunk table."""
        nchunks = len(self.chunk_min)
        parts = []
        for c in range(nchunks):
            cmin, cmax = int(self.chunk_min[c]), int(self.chunk_max[c])
            if (lo is not None and cmax < lo) or (hi is not None and cmin >= hi):
                continue
            base = c * K.CHUNK
            n = min(K.CHUNK, self.count - base)
            if (lo is None or cmin >= lo) and (hi is None or cmax < hi):
                parts.append(np.arange(base, base + n, dtype=np.int64))
                continue
            _, ts, _ = self.chunk(c)
            m = np.ones(len(ts), bool)
            if lo is not None:
                m &= ts >= lo
            if hi is not None:
                m &= ts < hi
            parts.append(np.flatnonzero(m).astype(np.int64) + base)
        if not parts:
            return np.empty(0, np.int64)
        return np.concatenate(parts)


# ---- records -------------------------------------------------------------------
def read_recs(rec_path: os.PathLike | str, pcap_size: int | None = None) -> np.ndarray:
    """Whole records of a .rec file; with pcap_size, only those whose packet lies
    wholly inside the first pcap_size bytes of the packet file."""
    with open(rec_path, "rb") as f:
        data = f.read()
    n = len(data) // layout.REC_DTYPE.itemsize
    recs = np.frombuffer(data, dtype=layout.REC_DTYPE, count=n)
    if pcap_size is not None and n:
        ok = recs["offset"].astype(np.int64) + 16 + recs["caplen"].astype(np.int64) <= pcap_size
        if not ok.all():
            recs = recs[ok]
    return recs


def recs_from_pcap(pcap_path: os.PathLike | str) -> np.ndarray:
    """Records of a complete nanosecond packet file, made by the native parser."""
    from ..native import api

    import mmap

    with open(pcap_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            return np.zeros(0, layout.REC_DTYPE)
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # a 4 GiB file need not fit in memory
    magic = data[:4]
    if magic == b"\x4d\x3c\xb2\xa1":
        nsec = True
    elif magic == b"\xd4\xc3\xb2\xa1":
        nsec = False
    else:
        raise StoreError(f"{pcap_path} is not a little-endian pcap file (magic {magic.hex()})")
    recs, _consumed = api.index_pcap(memoryview(data)[24:], 24, nsec)
    return recs


def index_file(pf, recs: np.ndarray | None = None) -> int:
    """Index one complete PacketFile (store.PacketFile); returns index bytes."""
    size = os.path.getsize(pf.pcap)
    if recs is None:
        if pf.rec.exists():
            recs = read_recs(pf.rec, size)
        else:
            recs = recs_from_pcap(pf.pcap)
    n = build_index(recs, pf.idx, size)
    try:
        pf.rec.unlink()
    except FileNotFoundError:
        pass
    return n


def index_completed(store) -> int:
    """Index every complete packet file that has no index yet. Returns how many."""
    done = 0
    for pf in store.files(include_open=False):
        if pf.idx.is_dir():
            if pf.rec.exists():  # indexed but crashed before deleting the .rec
                pf.rec.unlink(missing_ok=True)
            continue
        try:
            index_file(pf)
            done += 1
        except StoreError:
            raise
        except OSError as e:
            log.warning("indexing %s failed: %s", pf.pcap, e)
    return done

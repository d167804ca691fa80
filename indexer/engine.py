"""The query engine: query text -> a time-ordered pcap stream.

Per packet file:
  1. prune by time: the file's first/last timestamp against qlang.time_bounds;
  2. select: on an index, every leaf of the query is a key lookup (or a key
     range scan) giving a sorted ordinal array, combined with numpy set
     operations (`not` = the universe minus; before/after = exact ordinal sets
     from the chunk table); on a file with no index (the open file, or one not
     yet indexed) qlang.eval_records over its .rec records;
  3. the selection becomes arrays (ts, ordinal, offset, length) sorted by
     (ts, ordinal).
Across files (queues, interfaces, stores): a k-way merge by timestamp done in
batches -- every batch takes, from each active file, the packets up to a
common horizon, reads them with coalesced preads, and emits one output chunk.
Files are activated (their index opened and evaluated) only when the horizon
reaches their first timestamp, so the first bytes leave early.
"""
from __future__ import annotations

import heapq
import logging
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Iterator

import numpy as np

from .. import layout
from ..errors import IndexFormatError, QueryError, StoreError
from ..store import PCAP_SUFFIX, REC_SUFFIX, stamp_name
from . import keys as K
from .index import IndexReader, recs_from_pcap

log = logging.getLogger("stenoxdp.query")

PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_US = 0xA1B2C3D4
SNAPLEN = 262144
LINKTYPE_ETHERNET = 1

BATCH_PACKETS = 4096  # packets per merge step and per output chunk (at most)
GAP = 64 * 1024  # coalesce reads whose gap is below this
MAX_SPAN = 8 << 20  # and never read more than this in one pread


def pcap_header(micros: bool = False, snaplen: int = SNAPLEN) -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC_US if micros else PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def _qlang():
    from . import qlang

    return qlang


# ---- selection on an index ---------------------------------------------------------
def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    return np.union1d(a, b)


def _dirs(d) -> tuple[bool, bool]:
    """(look at source, look at destination) for a direction qualifier."""
    d = getattr(d, "value", d)
    d = str(d).lower() if d is not None else "any"
    if d.endswith("src"):
        return True, False
    if d.endswith("dst"):
        return False, True
    return True, True


def eval_index(node, rd: IndexReader) -> np.ndarray:
    """Sorted unique ordinals of the packets of one indexed file matching node."""
    name = type(node).__name__
    if name == "And":
        a = eval_index(node.a, rd)
        if len(a) == 0:
            return a
        b = eval_index(node.b, rd)
        return np.intersect1d(a, b, assume_unique=True)
    if name == "Or":
        return _union(eval_index(node.a, rd), eval_index(node.b, rd))
    if name == "Not":
        return np.setdiff1d(rd.all(), eval_index(node.a, rd), assume_unique=True)
    if name == "Host":
        s, d = _dirs(node.dir)
        out = np.empty(0, np.int64)
        if s:
            out = _union(out, rd.get(K.addr_key(bytes(node.addr), True)))
        if d:
            out = _union(out, rd.get(K.addr_key(bytes(node.addr), False)))
        return out
    if name == "Net":
        s, d = _dirs(node.dir)
        out = np.empty(0, np.int64)
        for src, want in ((True, s), (False, d)):
            if want:
                lo, hi = K.addr_range(bytes(node.addr), int(node.prefix), src)
                out = _union(out, rd.range(lo, hi))
        return out
    if name == "Port":
        s, d = _dirs(node.dir)
        out = np.empty(0, np.int64)
        for src, want in ((True, s), (False, d)):
            if want:
                lo, hi = K.port_range(int(node.lo), int(node.hi), src)
                out = _union(out, rd.range(lo, hi))
        return out
    if name == "Proto":
        return rd.get(K.proto_key(int(node.proto)))
    if name == "Icmp":
        return np.intersect1d(rd.get(K.proto_key(1)), rd.get(K.family_key(4)), assume_unique=True)
    if name == "Icmp6":
        return np.intersect1d(rd.get(K.proto_key(58)), rd.get(K.family_key(6)), assume_unique=True)
    if name == "Family":
        return rd.get(K.family_key(int(node.v)))
    if name == "Vlan":
        return rd.get(K.vlan_key(int(node.vid)))
    if name == "Mpls":
        return rd.get(K.mpls_key(int(node.label)))
    if name == "Before":
        return rd.time_range(None, int(node.ts_ns))
    if name == "After":
        return rd.time_range(int(node.ts_ns), None)
    raise QueryError(f"the index cannot answer a {name} term")


# ---- one packet file -------------------------------------------------------------------
@dataclass
class _Source:
    """One packet file taking part in a query."""

    seq: int
    pf: object
    first_ts: int
    last_ts: int
    reader: IndexReader | None = None
    recs: np.ndarray | None = None
    ts: np.ndarray | None = None  # selection sorted by (ts, ordinal)
    off: np.ndarray | None = None
    ln: np.ndarray | None = None
    pos: int = 0
    fd: int = -1
    size: int = 0
    scan: bool = False

    def remaining(self) -> int:
        return 0 if self.ts is None else len(self.ts) - self.pos

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class QueryStream:
    """Iterable of bytes chunks of ONE pcap file (first chunk: the 24-byte
    global header), produced as the answer is found. After (or during)
    iteration: packets, bytes (pcap bytes emitted), truncated (a limit stopped
    the answer), warnings (files skipped or scanned, one line each)."""

    def __init__(self, gen_fn):
        self.packets = 0
        self.bytes = 0
        self.truncated = False
        self.warnings: list[str] = []
        self._gen = gen_fn(self)

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def __next__(self) -> bytes:
        return next(self._gen)

    def read_all(self) -> bytes:
        return b"".join(self)

    def close(self) -> None:
        self._gen.close()


def _as_list(stores) -> list:
    if isinstance(stores, (list, tuple)):
        return list(stores)
    return [stores]


def _time_bounds(node) -> tuple[int | None, int | None]:
    """(lo inclusive, hi exclusive), None = open."""
    lo, hi = _qlang().time_bounds(node)
    return lo, hi


# A complete file's index never changes (reindex replaces the directory), so its
# time range is cached by (path, inode, mtime): repeated queries -- the server's
# case -- plan without opening every index. A file created at <stamp> holds no
# packet older than stamp - STAMP_SLACK_NS (ring backlog at rotation), so files
# stamped after a query's upper time bound are skipped without any I/O.
STAMP_SLACK_NS = 60 * 1_000_000_000
_META_MAX = 200_000
_meta_cache: "OrderedDict[tuple, tuple[int, int, int]]" = OrderedDict()
_meta_lock = threading.Lock()


def _meta_key(idx) -> tuple | None:
    try:
        st = os.stat(idx)
    except OSError:
        return None
    return (str(idx), st.st_ino, st.st_mtime_ns)


def _cached_meta(idx):
    k = _meta_key(idx)
    if k is None:
        return None
    with _meta_lock:
        v = _meta_cache.get(k)
        if v is not None:
            _meta_cache.move_to_end(k)
        return v


def _remember_meta(idx, meta) -> None:
    k = _meta_key(idx)
    if k is None:
        return
    with _meta_lock:
        _meta_cache[k] = meta
        while len(_meta_cache) > _META_MAX:
            _meta_cache.popitem(last=False)


REC_SLICE = 1 << 20  # records evaluated per numpy pass on .rec files
KEEP_OPEN = 64  # index DBs kept open from planning to evaluation


def _resolve(pf):
    """The PacketFile as it is now on disk: hidden or final pcap, hidden or final .rec."""
    d = pf.pcap.parent
    s = stamp_name(pf.stamp)
    fp, hp = d / f"{s}{PCAP_SUFFIX}", d / f".{s}{PCAP_SUFFIX}"
    fr, hr = d / f"{s}{REC_SUFFIX}", d / f".{s}{REC_SUFFIX}"
    if fp.exists():
        pcap, complete = fp, True
    elif hp.exists():
        pcap, complete = hp, False
    else:
        return None
    rec = hr if hr.exists() else fr
    return dc_replace(pf, pcap=pcap, rec=rec, complete=complete)


def map_recs(path) -> np.ndarray:
    """The whole records of a .rec file as a read-only memory map (no copy)."""
    n = os.path.getsize(path) // layout.REC_DTYPE.itemsize
    if n == 0:
        return np.zeros(0, layout.REC_DTYPE)
    return np.memmap(path, dtype=layout.REC_DTYPE, mode="r", shape=(n,))


def _ts_range(recs) -> tuple[int, int]:
    lo = hi = None
    for a in range(0, len(recs), REC_SLICE):
        t = recs["ts_ns"][a : a + REC_SLICE]
        tl, th = int(t.min()), int(t.max())
        lo = tl if lo is None else min(lo, tl)
        hi = th if hi is None else max(hi, th)
    return lo, hi


class _Planner:
    def __init__(self, stream: QueryStream, node, lo, hi):
        self.stream = stream
        self.node = node
        self.lo, self.hi = lo, hi

    def warn(self, msg: str) -> None:
        log.warning("%s", msg)
        self.stream.warnings.append(msg)

    # file metadata without evaluating the query
    def open_source(self, seq: int, pf) -> _Source | None:
        """Plan one packet file. The writer and the indexer may rename or delete
        its files meanwhile (.rec then .pcap at rotation, .rec after indexing):
        the names are re-resolved and the step retried a few times."""
        for _ in range(4):
            pf = _resolve(pf)
            if pf is None:
                return None  # deleted by retention meanwhile
            try:
                size = os.path.getsize(pf.pcap)
            except OSError:
                continue
            if pf.complete and pf.idx.is_dir():
                meta = _cached_meta(pf.idx)
                rd = None
                if meta is None:
                    try:
                        rd = IndexReader(pf.idx)
                        meta = (rd.first_ts, rd.last_ts, rd.count)
                    except (StoreError, IndexFormatError) as e:
                        self.warn(f"{e}; scanning {pf.pcap} instead")
                        return self._scan_source(seq, pf, size)
                    _remember_meta(pf.idx, meta)
                return _Source(seq, pf, meta[0], meta[1], reader=rd, size=size)
            if pf.complete and not pf.rec.exists():
                if pf.idx.is_dir():
                    continue
                self.warn(f"{pf.pcap} has no index yet; scanning it")
                return self._scan_source(seq, pf, size)
            try:
                recs = map_recs(pf.rec)
            except FileNotFoundError:
                continue  # renamed at rotation, or indexed and deleted: look again
            if len(recs) == 0:
                return None
            lo, hi = _ts_range(recs)
            return _Source(seq, pf, lo, hi, recs=recs, size=size)
        self.warn(f"{pf.pcap if pf else 'a packet file'} kept changing while the query was planned; skipped")
        return None

    def _scan_source(self, seq, pf, size) -> _Source | None:
        try:
            recs = recs_from_pcap(pf.pcap)
        except Exception as e:  # native helper missing or file unreadable
            self.warn(f"skipping {pf.pcap}: cannot scan it ({e})")
            return None
        recs = recs[recs["offset"].astype(np.int64) + 16 + recs["caplen"].astype(np.int64) <= size]
        if len(recs) == 0:
            return None
        ts = recs["ts_ns"]
        return _Source(seq, pf, int(ts.min()), int(ts.max()), recs=recs, size=size, scan=True)

    def select(self, s: _Source) -> None:
        """Evaluate the query on one source; fill its sorted selection arrays."""
        if s.reader is not None:
            try:
                ordn = eval_index(self.node, s.reader)
                off, ts, ln = s.reader.table(ordn)
                bad = None
            except QueryError:
                raise
            except Exception as e:  # damaged values inside a readable DB
                bad = e
            s.reader.close()
            s.reader = None
            if bad is not None:
                self.warn(f"index {s.pf.idx} is damaged ({bad}); scanning {s.pf.pcap} instead")
                alt = self._scan_source(s.seq, s.pf, s.size)
                if alt is None:
                    s.ts = s.off = s.ln = np.empty(0, np.int64)
                    s.pos = 0
                    return
                s.recs, s.scan = alt.recs, True
                return self.select(s)
        else:
            # records of the open file (a memory map: it may be large) or of a scan,
            # evaluated in slices so memory follows the answer, not the file
            recs = s.recs
            parts = []
            for a in range(0, len(recs), REC_SLICE):
                r = recs[a : a + REC_SLICE]
                mask = np.asarray(_qlang().eval_records(self.node, r), bool)
                mask &= r["offset"].astype(np.int64) + 16 + r["caplen"].astype(np.int64) <= s.size
                i = np.flatnonzero(mask)
                rs = r[i]
                parts.append((i + a, rs["offset"].astype(np.int64), rs["ts_ns"].astype(np.int64),
                              rs["caplen"].astype(np.int64) + 16))
            ordn, off, ts, ln = (np.concatenate([p[k] for p in parts]) for k in range(4))
            s.recs = None
        if len(ordn) and (self.lo is not None or self.hi is not None):
            m = np.ones(len(ts), bool)
            if self.lo is not None:
                m &= ts >= self.lo
            if self.hi is not None:
                m &= ts < self.hi
            ordn, off, ts, ln = ordn[m], off[m], ts[m], ln[m]
        order = np.lexsort((ordn, ts))
        s.ts, s.off, s.ln = ts[order], off[order], ln[order]
        s.pos = 0


def _read_batch(items: list[tuple[_Source, np.ndarray, np.ndarray]], warn) -> tuple[bytearray, np.ndarray, np.ndarray]:
    """items: (source, offsets, lengths) -> (buffer, start positions in buffer, ok mask)
    concatenated in items order. Reads are coalesced per file."""
    bufs: list[bytes] = []
    base = 0
    starts_all, ok_all = [], []
    for s, off, ln in items:
        n = len(off)
        starts = np.zeros(n, np.int64)
        ok = np.ones(n, bool)
        if n == 0:
            starts_all.append(starts)
            ok_all.append(ok)
            continue
        if s.fd < 0:
            try:
                s.fd = os.open(s.pf.pcap, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # deleted by retention (or renamed complete) meanwhile
                alt = s.pf.pcap.with_name(s.pf.pcap.name.lstrip(".")) if not s.pf.complete else None
                try:
                    if alt is None:
                        raise FileNotFoundError
                    s.fd = os.open(alt, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    warn(f"{s.pf.pcap} was deleted during the query; {n} packet(s) from it are missing")
                    starts_all.append(starts)
                    ok_all.append(np.zeros(n, bool))
                    continue
        o = np.argsort(off, kind="stable")
        so, sl = off[o], ln[o]
        ends = so + sl
        # span breaks where the next packet starts more than GAP after the running end
        run_end = np.maximum.accumulate(ends)
        brk = np.flatnonzero(so[1:] > run_end[:-1] + GAP) + 1
        sp_starts = np.concatenate([[0], brk])
        sp_ends = np.append(brk, n)
        pos_sorted = np.empty(n, np.int64)
        for a, b in zip(sp_starts.tolist(), sp_ends.tolist()):
            lo = int(so[a])
            hi = int(run_end[b - 1])
            # split very large spans into pieces (still one pread each)
            chunk = bytearray()
            p = lo
            while p < hi:
                want = min(MAX_SPAN, hi - p)
                got = os.pread(s.fd, want, p)
                if not got:
                    break
                chunk += got
                p += len(got)
            pos_sorted[a:b] = base + (so[a:b] - lo)
            if len(chunk) < hi - lo:
                short = so[a:b] + sl[a:b] > lo + len(chunk)
                okb = ok[o[a:b]]
                okb[short] = False
                ok[o[a:b]] = okb
                warn(f"{s.pf.pcap}: file shorter than its index says; {int(short.sum())} packet(s) skipped")
            bufs.append(bytes(chunk))
            base += len(chunk)
        starts[o] = pos_sorted
        starts_all.append(starts)
        ok_all.append(ok)
    buf = bytearray(b"".join(bufs))
    starts = np.concatenate(starts_all) if starts_all else np.zeros(0, np.int64)
    ok = np.concatenate(ok_all) if ok_all else np.zeros(0, bool)
    return buf, starts, ok


def _u32_at(arr: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (
        arr[pos].astype(np.uint32)
        | (arr[pos + 1].astype(np.uint32) << 8)
        | (arr[pos + 2].astype(np.uint32) << 16)
        | (arr[pos + 3].astype(np.uint32) << 24)
    )


def _generate(stream: QueryStream, stores: list, node, limit_packets: int, limit_bytes: int, micros: bool, iface):
    lo, hi = _time_bounds(node)
    plan = _Planner(stream, node, lo, hi)
    hdr = pcap_header(micros)
    stream.bytes = len(hdr)
    yield hdr
    budget_bytes = 16  # Stenographer: the global header counts 16
    # every file, in a global sequence (tie-break for equal timestamps)
    pfs = []
    for st in stores:
        pfs.extend(st.files(iface) if iface else st.files())
    pfs.sort(key=lambda f: (f.stamp, f.iface, f.queue))
    pending: list[tuple[int, int, _Source]] = []
    kept = 0
    for seq, pf in enumerate(pfs):
        if hi is not None and pf.stamp > hi + STAMP_SLACK_NS:
            continue
        s = plan.open_source(seq, pf)
        if s is None:
            continue
        if (hi is not None and s.first_ts >= hi) or (lo is not None and s.last_ts < lo):
            s.close()
            continue
        # a DB opened for planning stays open for its evaluation (an open costs ~5 ms),
        # but only for the first KEEP_OPEN files: the others are reopened on activation
        if s.reader is not None:
            if kept < KEEP_OPEN:
                kept += 1
            else:
                s.reader.close()
                s.reader = None
        pending.append((s.first_ts, seq, s))
    heapq.heapify(pending)
    active: list[_Source] = []
    limit_hit = False
    try:
        while pending or active:
            # activate every file that starts at or before the earliest pending packet
            nxt = min((int(s.ts[s.pos]) for s in active), default=None)
            while pending and (nxt is None or pending[0][0] <= nxt):
                _, _, s = heapq.heappop(pending)
                if s.recs is None and not s.scan and s.reader is None:
                    try:
                        s.reader = IndexReader(s.pf.idx)
                    except (StoreError, IndexFormatError) as e:
                        plan.warn(f"{e}; scanning {s.pf.pcap} instead")
                        alt = plan._scan_source(s.seq, s.pf, s.size)
                        if alt is None:
                            continue
                        s.recs, s.scan = alt.recs, True
                plan.select(s)
                if s.remaining() == 0:
                    s.close()
                    continue
                active.append(s)
                t0 = int(s.ts[0])
                nxt = t0 if nxt is None else min(nxt, t0)
            if not active:
                continue
            # horizon: no active file may contribute past its BATCH-th pending packet,
            # and nothing at or after the next pending file's first packet
            horizon = None
            for s in active:
                if s.remaining() > BATCH_PACKETS:
                    t = int(s.ts[s.pos + BATCH_PACKETS - 1])
                    horizon = t if horizon is None else min(horizon, t)
            strict = None
            if pending:
                strict = pending[0][0]
            take = []
            for s in active:
                ts = s.ts[s.pos :]
                n = len(ts)
                if horizon is not None:
                    n = min(n, int(np.searchsorted(ts, horizon, side="right")))
                if strict is not None:
                    n = min(n, int(np.searchsorted(ts, strict, side="left")))
                if n:
                    take.append((s, s.pos, s.pos + n))
            if not take:  # cannot happen (the earliest active packet is always taken); be safe
                break
            items = [(s, s.off[a:b], s.ln[a:b]) for s, a, b in take]
            buf, starts, ok = _read_batch(items, plan.warn)
            ts_all = np.concatenate([s.ts[a:b] for s, a, b in take])
            seq_all = np.concatenate([np.full(b - a, s.seq, np.int64) for s, a, b in take])
            idx_all = np.concatenate([np.arange(a, b, dtype=np.int64) for s, a, b in take])
            ln_all = np.concatenate([s.ln[a:b] for s, a, b in take])
            for s, a, b in take:
                s.pos = b
            active = [s for s in active if s.remaining() > 0 or s.close()]
            order = np.lexsort((idx_all, seq_all, ts_all))
            order = order[ok[order]]
            arr = np.frombuffer(buf, np.uint8)
            st = starts[order]
            ln = ln_all[order]
            if len(st):
                capl = _u32_at(arr, st + 8).astype(np.int64)
                good = capl + 16 == ln
                if not good.all():
                    plan.warn(f"{int((~good).sum())} packet record(s) did not match the index and were skipped")
                    st, ln, order = st[good], ln[good], order[good]
            # limits (Stenographer's: the header counts 16, each packet its length + 16,
            # the answer stops after the packet that reaches the limit)
            n = len(st)
            if limit_hit and n:
                stream.truncated = True
                return
            if limit_packets:
                n = min(n, limit_packets - stream.packets)
                limit_hit = stream.packets + n >= limit_packets
            if limit_bytes:
                cum = budget_bytes + np.cumsum(ln[:n])
                over = np.flatnonzero(cum >= limit_bytes)
                if len(over):
                    n = int(over[0]) + 1
                    limit_hit = True
            if n < len(st):
                stream.truncated = True
            st, ln = st[:n], ln[:n]
            if micros and n:
                frac = _u32_at(arr, st + 4) // 1000
                for k in range(4):
                    arr[st + 4 + k] = ((frac >> (8 * k)) & 0xFF).astype(np.uint8)
            # runs of packets contiguous in buf become one slice
            if n:
                ends = st + ln
                brk = np.flatnonzero(st[1:] != ends[:-1]) + 1
                rs = np.concatenate([[0], brk])
                re_ = np.append(brk, n)
                mv = memoryview(buf)
                out = b"".join(mv[int(st[a]) : int(ends[b - 1])] for a, b in zip(rs.tolist(), re_.tolist()))
                stream.packets += n
                stream.bytes += len(out)
                budget_bytes += int(ln.sum())
                yield out
            if stream.truncated:
                return
    finally:
        for s in active:
            s.close()
        for _, _, s in pending:
            s.close()


def query(stores, text: str, *, limit_packets: int = 0, limit_bytes: int = 0, micros: bool = False,
          iface: str | None = None, now_ns: int | None = None) -> QueryStream:
    """Answer a query over one or more stores as a pcap stream (see QueryStream).
    Raises QueryError now (not during iteration) for a query that does not parse."""
    node = _qlang().parse(text, now_ns=now_ns)
    if limit_packets < 0 or limit_bytes < 0:
        raise QueryError("limits must be zero (no limit) or positive")
    stores = _as_list(stores)
    return QueryStream(lambda st: _generate(st, stores, node, int(limit_packets), int(limit_bytes), micros, iface))


def coverage(stores) -> list[dict]:
    """Per interface: first_ts_ns, last_ts_ns, files, packets, bytes (packet file bytes)."""
    acc: dict[str, dict] = {}
    for st in _as_list(stores):
        for pf in st.files():
            d = acc.setdefault(pf.iface, {"iface": pf.iface, "first_ts_ns": None, "last_ts_ns": None,
                                          "files": 0, "packets": 0, "bytes": 0})
            try:
                size = os.path.getsize(pf.pcap)
            except OSError:
                continue
            first = last = None
            count = 0
            if pf.complete and pf.idx.is_dir():
                meta = _cached_meta(pf.idx)
                if meta is None:
                    try:
                        with IndexReader(pf.idx) as rd:
                            meta = (rd.first_ts, rd.last_ts, rd.count)
                        _remember_meta(pf.idx, meta)
                    except (StoreError, IndexFormatError):
                        meta = None
                if meta is not None:
                    first, last, count = meta
            elif pf.rec.exists():
                try:
                    recs = map_recs(pf.rec)
                except OSError:
                    recs = np.zeros(0, layout.REC_DTYPE)
                count = len(recs)
                if count:
                    first, last = _ts_range(recs)
            d["files"] += 1
            d["bytes"] += size
            d["packets"] += count
            if count:
                d["first_ts_ns"] = first if d["first_ts_ns"] is None else min(d["first_ts_ns"], first)
                d["last_ts_ns"] = last if d["last_ts_ns"] is None else max(d["last_ts_ns"], last)
    return [acc[k] for k in sorted(acc)]

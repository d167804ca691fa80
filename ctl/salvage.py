"""Crash salvage: run at start, before any writer, on every queue directory of a store.

What a crash (kill -9 of any process, or of all of them) can leave, and what salvage does:
  .<stamp>.del                tombstone of an interrupted deletion -> finish it (retention.finish_deletion)
  .<stamp>.pcap (+ .rec)      the file that was being written -> keep every complete packet: truncate at
                              the end of the last complete record, write <stamp>.rec from the packets,
                              rename to <stamp>.pcap (the indexer picks it up); a file with no complete
                              packet (only a global header, or less) is removed
  <stamp>.pcap, no .rec/.idx  a completed file that lost its records -> write <stamp>.rec again
  <stamp>.rec without pcap    orphan -> removed;  .<stamp>.rec without .<stamp>.pcap -> removed
  <stamp>.idx without pcap    orphan index -> removed;  .<stamp>.idx.tmp (indexer cut short) -> removed
Every step is idempotent, so a crash during salvage is salvaged by the next start, and nothing is
deleted twice. Records come from the native helper (stenoxdp.native.api.index_pcap), which parses
each packet as the capture path does; without it, from the writer's own records where they cover the
packet and from the pcap record headers (time and lengths only) for the rest.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .layout import REC_DTYPE
from .retention import TOMB_SUFFIX, finish_deletion
from .store import IDX_SUFFIX, PCAP_SUFFIX, REC_SUFFIX, Store, fsync_dir

log = logging.getLogger("stenoxdp.salvage")

PCAP_HDR = 24
REC_HDR = 16
MAGIC_NS = 0xA1B23C4D
MAGIC_US = 0xA1B2C3D4
MAX_CAPLEN = 262144
_NAME = re.compile(r"^(\.?)(\d{19})(\.pcap|\.rec|\.del|\.idx|\.idx\.tmp|\.rec\.salvage)$")


@dataclass
class SalvageReport:
    salvaged: list[dict] = field(default_factory=list)     # partial files kept: path, packets, kept, cut
    removed: list[dict] = field(default_factory=list)      # path, why
    deletions_finished: list[str] = field(default_factory=list)
    recs_rebuilt: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.salvaged or self.removed or self.deletions_finished or self.recs_rebuilt)

    def merge(self, o: "SalvageReport") -> None:
        self.salvaged += o.salvaged
        self.removed += o.removed
        self.deletions_finished += o.deletions_finished
        self.recs_rebuilt += o.recs_rebuilt

    def __str__(self) -> str:
        if not self:
            return "nothing to salvage"
        parts = []
        if self.salvaged:
            n = sum(s["packets"] for s in self.salvaged)
            parts.append(f"{len(self.salvaged)} partial file(s) kept with {n} packet(s) "
                         f"({sum(s['cut'] for s in self.salvaged)} trailing byte(s) of cut records dropped)")
        if self.recs_rebuilt:
            parts.append(f"records rebuilt for {len(self.recs_rebuilt)} file(s)")
        if self.deletions_finished:
            parts.append(f"{len(self.deletions_finished)} interrupted deletion(s) finished")
        if self.removed:
            parts.append(f"{len(self.removed)} orphan/empty file(s) removed")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"salvaged": self.salvaged, "removed": self.removed, "deletions_finished": self.deletions_finished,
                "recs_rebuilt": self.recs_rebuilt, "summary": str(self)}


# ---------------------------------------------------------------------------- pcap walking
def pcap_kind(head: bytes) -> tuple[bool, str] | None:
    """(nanosecond?, byte order '<' or '>') of a pcap global header, None if it is not one."""
    if len(head) < PCAP_HDR:
        return None
    for order in ("<", ">"):
        (m,) = struct.unpack(order + "I", head[:4])
        if m == MAGIC_NS:
            return True, order
        if m == MAGIC_US:
            return False, order
    return None


def walk_records(buf, start: int, order: str = "<", nsec: bool = True):
    """Record boundaries of a pcap body: (offsets, ts_ns, caplen, wirelen, end) where end is the offset
    just past the last complete record. Stops at a cut record, an impossible header (caplen > 256 KiB
    or > wire length) or an all-zero header (preallocated space)."""
    n = len(buf)
    off = start
    offs, tss, caps, lens = [], [], [], []
    unpack = struct.Struct(order + "IIII").unpack_from
    mult = 1 if nsec else 1000
    while off + REC_HDR <= n:
        sec, frac, cap, wl = unpack(buf, off)
        if (sec | frac | cap | wl) == 0 or cap > MAX_CAPLEN or cap > wl or off + REC_HDR + cap > n:
            break
        offs.append(off)
        tss.append(sec * 1_000_000_000 + frac * mult)
        caps.append(cap)
        lens.append(wl)
        off += REC_HDR + cap
    return (np.array(offs, dtype=np.uint64), np.array(tss, dtype=np.uint64), np.array(caps, dtype=np.uint32),
            np.array(lens, dtype=np.uint32), off)


def _native_index():
    try:
        from stenoxdp.native.api import index_pcap  # type: ignore
    except Exception:
        return None
    return index_pcap


def records_for(buf, nsec: bool, order: str, writer_recs: np.ndarray | None, index_pcap=None
                ) -> tuple[np.ndarray, int]:
    """(sxdp_rec records, end) for every complete packet of a pcap file's bytes; end = just past the last."""
    if index_pcap is not None and order == "<":
        with memoryview(buf) as mv:
            body = mv[PCAP_HDR:]
            try:
                recs, _consumed = index_pcap(body, PCAP_HDR, nsec)
                recs = np.array(recs, dtype=REC_DTYPE)  # a copy: the buffer is released below
            finally:
                body.release()
        # preallocated (zero) space or an impossible header ends the file
        bad = ((recs["caplen"] == 0) & (recs["wirelen"] == 0) & (recs["ts_ns"] == 0)) | \
              (recs["caplen"] > MAX_CAPLEN) | (recs["caplen"] > recs["wirelen"])
        if bad.any():
            recs = recs[: int(np.argmax(bad))]
        end = int(recs["offset"][-1]) + REC_HDR + int(recs["caplen"][-1]) if len(recs) else PCAP_HDR
        return recs, end
    offs, ts, caps, lens, end = walk_records(buf, PCAP_HDR, order, nsec)
    recs = np.zeros(len(offs), dtype=REC_DTYPE)
    recs["offset"], recs["ts_ns"], recs["caplen"], recs["wirelen"] = offs, ts, caps, lens
    if writer_recs is not None and len(writer_recs) and len(recs):
        w = writer_recs[np.argsort(writer_recs["offset"], kind="stable")]
        pos = np.searchsorted(w["offset"], offs)
        pos_c = np.minimum(pos, len(w) - 1)
        hit = (pos < len(w)) & (w["offset"][pos_c] == offs) & (w["caplen"][pos_c] == caps)
        recs[hit] = w[pos_c[hit]]
    return recs, end


def _read_recs(path: Path) -> np.ndarray | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    n = len(raw) // REC_DTYPE.itemsize
    return np.frombuffer(raw[: n * REC_DTYPE.itemsize], dtype=REC_DTYPE).copy()


def _write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name.lstrip(".") + ".salvage")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _rm(path: Path, why: str, rep: SalvageReport) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return
    rep.removed.append({"path": str(path), "why": why})


def _rebuild(pcap: Path, writer_rec: Path | None, index_pcap) -> tuple[np.ndarray, int, int, int] | None:
    """(recs, end, size, last_ts) for a packet file (nothing is changed); None if it is not pcap."""
    with open(pcap, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < PCAP_HDR:
            return np.zeros(0, dtype=REC_DTYPE), 0, size, 0
        kind = pcap_kind(fh.read(PCAP_HDR))
        if kind is None:
            return None
        nsec, order = kind
        if size == PCAP_HDR:
            return np.zeros(0, dtype=REC_DTYPE), PCAP_HDR, size, 0
        mm = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
        try:
            wrecs = _read_recs(writer_rec) if writer_rec is not None else None
            recs, end = records_for(mm, nsec, order, wrecs, index_pcap)
        finally:
            mm.close()
    last = int(recs["ts_ns"].max()) if len(recs) else 0
    return recs, end, size, last


# ---------------------------------------------------------------------------- per queue
def open_paths(roots: list[Path]) -> set[str]:
    """Paths under roots that some live process has open (from /proc/*/fd): a writer or indexer of
    another interface sharing the store, or another daemon. Salvage leaves those alone."""
    pre = tuple(str(Path(r).resolve()) + os.sep for r in roots)
    out: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:  # this process too: the daemon's own indexer and query threads hold files open
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                t = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if t.startswith(pre):
                out.add(t)
    return out


def _busy(path: Path, opened: set[str]) -> bool:
    if not opened:
        return False
    p = str(path.resolve())
    return p in opened or any(o.startswith(p + os.sep) for o in opened)


def salvage_queue(store: Store, iface: str, q: int, index_pcap="auto", opened: set[str] | None = None
                  ) -> SalvageReport:
    """Salvage one queue directory (and its index directory). Files some live process has open are
    left alone (opened: precomputed open_paths(), None = look now)."""
    if index_pcap == "auto":
        index_pcap = _native_index()
    if opened is None:
        opened = open_paths([store.root, store.index_root])
    rep = SalvageReport()
    d = store.queue_dir(iface, q)
    idir = store.index_queue_dir(iface, q)
    names = set(os.listdir(d)) if d.is_dir() else set()
    inames = set(os.listdir(idir)) if idir.is_dir() else set()
    live = {nm for nm in names if _busy(d / nm, opened)}
    ilive = {nm for nm in inames if _busy(idir / nm, opened)}
    for nm in list(live):  # a live file being written: its records file is live too
        m = _NAME.match(nm)
        if m and m.group(1) == "." and m.group(3) == PCAP_SUFFIX:
            live.add(f".{m.group(2)}{REC_SUFFIX}")

    def has(name: str) -> bool:
        return name in names

    by_stamp: dict[str, set[str]] = {}
    for nm in names - live:
        m = _NAME.match(nm)
        if m:
            by_stamp.setdefault(m.group(2), set()).add(m.group(1) + m.group(3))

    # 1. interrupted deletions
    for s, kinds in sorted(by_stamp.items()):
        if "." + TOMB_SUFFIX not in kinds:
            continue
        stamp = int(s)
        if has(f"{s}{PCAP_SUFFIX}"):
            (d / f".{s}{TOMB_SUFFIX}").unlink(missing_ok=True)  # the pair is whole: only the marker goes
        else:
            finish_deletion(store, iface, q, stamp)
            names.discard(f"{s}{REC_SUFFIX}")
            inames.discard(f"{s}{IDX_SUFFIX}")
            rep.deletions_finished.append(str(d / f"{s}{PCAP_SUFFIX}"))
        names.discard(f".{s}{TOMB_SUFFIX}")

    # leftovers of salvage itself
    for nm in sorted(names - live):
        if nm.endswith(".salvage"):
            _rm(d / nm, "temporary file of an interrupted salvage", rep)
            names.discard(nm)

    # 2. files that were being written
    for s, kinds in sorted(by_stamp.items()):
        hp = f".{s}{PCAP_SUFFIX}"
        if hp not in names or hp in live:
            continue
        pcap = d / hp
        wrec = d / f".{s}{REC_SUFFIX}"
        if not wrec.exists():
            wrec = d / f"{s}{REC_SUFFIX}" if has(f"{s}{REC_SUFFIX}") else None
        r = _rebuild(pcap, wrec, index_pcap)
        final_pcap, final_rec, idx = store.final_paths(iface, q, int(s))
        if r is None or len(r[0]) == 0:
            why = "not a pcap file" if r is None else (
                "no complete packet (only a global header or less)")
            _rm(pcap, why, rep)
            for extra in (d / f".{s}{REC_SUFFIX}", final_rec):
                _rm(extra, "records of a removed partial file", rep)
            names -= {hp, f".{s}{REC_SUFFIX}", f"{s}{REC_SUFFIX}"}
            continue
        recs, end, size, last = r
        if end < size:
            os.truncate(pcap, end)
        with open(pcap, "rb+") as fh:
            os.fsync(fh.fileno())
        if idx.exists():  # an index of other content must not survive
            shutil.rmtree(idx, ignore_errors=True)
            inames.discard(f"{s}{IDX_SUFFIX}")
        _write_file_atomic(final_rec, recs.tobytes())
        (d / f".{s}{REC_SUFFIX}").unlink(missing_ok=True)
        os.rename(pcap, final_pcap)
        if last:
            os.utime(final_pcap, ns=(last, last))
        fsync_dir(d)
        rep.salvaged.append({"path": str(final_pcap), "packets": int(len(recs)), "kept": int(end),
                             "cut": int(size - end)})
        names -= {hp, f".{s}{REC_SUFFIX}"}
        names |= {f"{s}{PCAP_SUFFIX}", f"{s}{REC_SUFFIX}"}

    # 3. completed files: records lost and not indexed -> rebuild; orphans -> remove
    for nm in sorted(names - live):
        m = _NAME.match(nm)
        if not m:
            continue
        hidden, s, suf = m.group(1), m.group(2), m.group(3)
        if suf == PCAP_SUFFIX and not hidden:
            if not has(f"{s}{REC_SUFFIX}") and f"{s}{IDX_SUFFIX}" not in inames:
                r = _rebuild(d / nm, None, index_pcap)
                if r is not None and len(r[0]):
                    recs, end, size, _last = r
                    if end < size:
                        os.truncate(d / nm, end)
                    _write_file_atomic(d / f"{s}{REC_SUFFIX}", recs.tobytes())
                    rep.recs_rebuilt.append(str(d / nm))
        elif suf == REC_SUFFIX:
            if hidden and f".{s}{PCAP_SUFFIX}" not in names:
                _rm(d / nm, "records without their packet file", rep)
            elif not hidden and f"{s}{PCAP_SUFFIX}" not in names:
                _rm(d / nm, "records without their packet file", rep)

    # 4. the index side
    for nm in sorted(inames - ilive):
        m = _NAME.match(nm)
        if not m:
            continue
        hidden, s, suf = m.group(1), m.group(2), m.group(3)
        if suf == ".idx.tmp":
            _rm(idir / nm, "index build cut short (rebuilt from the records)", rep)
        elif suf == IDX_SUFFIX and not hidden and f"{s}{PCAP_SUFFIX}" not in names:
            _rm(idir / nm, "index without its packet file", rep)
    return rep


def salvage_store(store: Store, iface: str | None = None, index_pcap="auto") -> SalvageReport:
    """Salvage every queue of a store (or of one interface). Run before any writer starts."""
    if index_pcap == "auto":
        index_pcap = _native_index()
    rep = SalvageReport()
    ifaces = [iface] if iface else sorted(set(store.ifaces()) | set(_index_ifaces(store)))
    opened = open_paths([store.root, store.index_root])
    for ifc in ifaces:
        queues = set(store.queues(ifc)) | set(_index_queues(store, ifc))
        for q in sorted(queues):
            rep.merge(salvage_queue(store, ifc, q, index_pcap, opened))
    if rep:
        log.info("salvage %s: %s", store.root, rep)
    return rep


def _index_ifaces(store: Store) -> list[str]:
    try:
        return [p.name for p in store.index_root.iterdir() if p.is_dir()]
    except OSError:
        return []


def _index_queues(store: Store, iface: str) -> list[int]:
    d = store.index_root / iface
    try:
        return [int(p.name[1:]) for p in d.iterdir() if p.is_dir() and p.name.startswith("q") and p.name[1:].isdigit()]
    except OSError:
        return []

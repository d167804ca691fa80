"""Import existing captures into a store as if captured, and rebuild indexes.

import_file(store, path, iface="import"): every frame of the input (pcap or
pcapng) is written into nanosecond packet files under
packets/<iface>/q0/, unchanged: bytes, captured length, original length and
timestamp (µs inputs become ns exactly). Files rotate like the writer's (by
bytes and by time span); each file's stamp is its oldest packet's timestamp
(bumped by 1 ns while taken, so several imports into one store never clash).
Each file is built hidden, indexed (records by the native parser over the
written bytes, then index.build_index), then renamed complete -- so a query
never sees an imported file without its index.

reindex(store): rebuild the index of every complete packet file from the
packet file itself.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError, UsageError
from ..store import Store, fsync_dir, valid_iface_name
from . import index as I
from .engine import pcap_header
from .pcapio import read_frames

ROTATE_BYTES = 256 << 20
ROTATE_NS = 60 * 1_000_000_000
BUILD_BATCH = 4 << 20  # frame bytes per numpy gather


@dataclass
class ImportResult:
    path: str
    packets: int
    bytes: int
    files: int
    index_bytes: int


def _free_stamp(store: Store, iface: str, queue: int, stamp: int) -> int:
    while True:
        pcap, _, idx = store.final_paths(iface, queue, stamp)
        hp, hr = store.open_paths(iface, queue, stamp)
        if not (pcap.exists() or hp.exists() or idx.exists() or hr.exists()):
            return stamp
        stamp += 1


def _write_file(store: Store, iface: str, queue: int, frames, sel: np.ndarray) -> tuple[int, int]:
    from .pcapio import build_records

    stamp = _free_stamp(store, iface, queue, int(frames.ts_ns[sel].min()) if len(sel) else 0)  # no packet older than the stamp
    hp, _ = store.open_paths(iface, queue, stamp)
    pcap, _, idx = store.final_paths(iface, queue, stamp)
    hp.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(hp, "wb") as f:
        hdr = pcap_header(False)
        f.write(hdr)
        size += len(hdr)
        caps = frames.caplen[sel]
        cum = np.cumsum(caps)
        start = 0
        while start < len(sel):
            base = int(cum[start - 1]) if start else 0
            stop = int(np.searchsorted(cum, base + BUILD_BATCH, side="right"))
            stop = max(stop, start + 1)
            data = build_records(frames, sel[start:stop])
            f.write(data)
            size += len(data)
            start = stop
        f.flush()
        os.fsync(f.fileno())
    try:
        recs = I.recs_from_pcap(hp)
        nidx = I.build_index(recs, idx, size)
        os.replace(hp, pcap)
        fsync_dir(pcap.parent)
    except BaseException:
        hp.unlink(missing_ok=True)
        if idx.exists():
            shutil.rmtree(idx, ignore_errors=True)
        raise
    return size, nidx


def import_file(store: Store, path: os.PathLike | str, iface: str = "import", *, queue: int = 0,
                rotate_bytes: int = ROTATE_BYTES, rotate_ns: int = ROTATE_NS) -> ImportResult:
    if not valid_iface_name(iface):
        raise UsageError(f"--iface {iface!r} is not a valid interface name (letters, digits, _.:@-)")
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    store.init()
    frames = read_frames(p)
    n = len(frames)
    if n == 0:
        return ImportResult(str(p), 0, 0, 0, 0)
    # rotation points in input order: a new file when the bytes or the time span would exceed the limits
    rec_len = frames.caplen + 16
    ts = frames.ts_ns
    cum = np.cumsum(rec_len)

    def time_cut(start: int) -> int:
        """Frames from start until the time span would pass rotate_ns (windows that
        double, so the work stays proportional to the file, not to the input)."""
        t0 = int(ts[start])
        a, w = start, 4096
        while a < n:
            seg = ts[a : a + w]
            bad = np.flatnonzero((seg - t0 >= rotate_ns) | (seg < t0 - rotate_ns))
            if len(bad):
                return a + int(bad[0]) - start
            a += w
            w *= 2
        return n - start

    files = []
    start = 0
    while start < n:
        base = int(cum[start - 1]) if start else 0
        by_bytes = int(np.searchsorted(cum, base + rotate_bytes - 24, side="right")) - start
        cnt = max(1, min(by_bytes, time_cut(start), n - start))
        files.append(np.arange(start, start + cnt))
        start += cnt
    total = nidx = 0
    for sel in files:
        s, i = _write_file(store, iface, queue, frames, sel)
        total += s
        nidx += i
    return ImportResult(str(p), n, total, len(files), nidx)


def reindex(store: Store) -> int:
    """Rebuild the index of every complete packet file from its packets. Returns the count."""
    if not store.packets_root.is_dir():
        raise StoreError(f"{store.root} is not a stenoxdp store (no packets/ directory)")
    n = 0
    for pf in store.files(include_open=False):
        recs = I.recs_from_pcap(pf.pcap)
        I.build_index(recs, pf.idx, os.path.getsize(pf.pcap))
        pf.rec.unlink(missing_ok=True)
        n += 1
    return n

"""One writer process per (interface, RX queue).

It owns one AF_XDP socket (UMEM, fill and RX rings) and appends packets to
nanosecond pcap files. Per batch, ONE native call (native/sxdp_rx.c, with all
pointers precomputed) takes what the RX ring holds, copies "pcap record header
from the XDP metadata + packet" for every descriptor into a page-aligned
staging buffer with one 80-byte index record per packet, hands the frames back
to the fill ring and publishes both ring indices. No per-packet Python.
Whole aligned blocks of staging (>= 1 MiB) go to an I/O thread that writes
them with O_DIRECT (falling back to buffered writes where the file system
refuses O_DIRECT) while the loop fills the other staging buffer; every
``flush_interval`` the unaligned tail is written through the page cache too,
so readers see packets within a second.

Files: hidden ``.<stamp>.pcap`` + ``.<stamp>.rec`` while open; at rotation
(age or size) the .rec then the .pcap are renamed to their final names.
The .rec file only ever holds records of packets already in the .pcap.

Disk full: the writer keeps its staging buffer, stops draining the RX ring
(the kernel counts the drops in XDP_STATISTICS), and retries until retention
frees space. It never exits on ENOSPC.

Run by the controller: ``python -m stenoxdp.writer --json '{...}'``.
"""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import select
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import layout
from .native.rx import RUN_IDLE, RxBatcher
from .store import Store, fsync_dir

PCAP_NS_MAGIC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
ALIGN = 4096
REC_SIZE = layout.REC_DTYPE.itemsize
BURST_PPS = 1.5e6  # the fastest burst a queue is sized for (about this VM's XDP_DROP limit)
IDLE_POLL_NS = 50_000_000  # after this long with an empty ring, sleep in poll() instead
RUN_BUDGET_NS = 50_000_000  # one native run returns at least this often (housekeeping, stop)


def pcap_global_header(snaplen: int = SNAPLEN, nanos: bool = True) -> bytes:
    import struct

    magic = PCAP_NS_MAGIC if nanos else 0xA1B2C3D4
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


class PcapSink:
    """Two page-aligned staging buffers + the packet file and record file being
    written. Whole aligned blocks go to one I/O thread (at most one write in
    flight, on the buffer not being filled), so copying the next batch and
    writing the last one overlap; records follow their packets to disk."""

    def __init__(self, store: Store, iface: str, queue: int, rotate_seconds: float, rotate_bytes: int,
                 direct: str = "auto", block: int = 1 << 20, staging_size: int = 8 << 20, async_io: bool = True):
        self.store, self.iface, self.queue = store, iface, queue
        self.rotate_ns = int(rotate_seconds * 1e9)
        self.rotate_bytes = min(int(rotate_bytes), (4 << 30) - 1)
        self.direct_mode = direct
        self.block = block
        self._maps = [mmap.mmap(-1, staging_size), mmap.mmap(-1, staging_size)]
        self._bufs = [np.frombuffer(m, dtype=np.uint8) for m in self._maps]
        self.cur = 0
        self.st = self._bufs[0]
        self.staging = self._maps[0]
        self.cap = staging_size
        nrecs = staging_size // 76 + 4096
        self._recbufs = [np.zeros(nrecs, dtype=layout.REC_DTYPE), np.zeros(nrecs, dtype=layout.REC_DTYPE)]
        self.rcur = 0
        self.recs = self._recbufs[0]
        self.nrec = 0
        self.pos = 0           # bytes pending in the current buffer
        self.base = 0          # file offset of the current buffer's first byte
        self.fd_buf = self.fd_direct = self.fd_rec = -1
        self.stamp = 0
        self.last_ts = 0
        self.opened_mono = 0
        self.dir = store.queue_dir(iface, queue)
        self.files_closed = 0
        self.direct_active = False
        self._pool = None
        if async_io:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"io-{iface}-q{queue}")
        self._pending = None   # (future, job) of the write in flight
        self._failed = None    # a job whose write failed (e.g. ENOSPC): retried before anything else

    @property
    def is_open(self) -> bool:
        return self.fd_buf >= 0

    @property
    def file_bytes(self) -> int:
        return self.base + self.pos

    @property
    def st_addr(self) -> int:
        return self.st.ctypes.data

    @property
    def recs_addr(self) -> int:
        return self.recs.ctypes.data

    def space(self) -> int:
        return self.cap - self.pos

    def open_new(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = time.time_ns()
        while True:
            pcap, rec = self.store.open_paths(self.iface, self.queue, stamp)
            final = self.store.final_paths(self.iface, self.queue, stamp)[0]
            if not pcap.exists() and not final.exists():
                break
            stamp += 1
        self.stamp, self.pcap_path, self.rec_path = stamp, pcap, rec
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self.fd_buf = os.open(pcap, flags, 0o640)
        self.fd_rec = os.open(rec, flags, 0o640)
        self.fd_direct = -1
        if self.direct_mode in ("auto", "direct"):
            try:
                self.fd_direct = os.open(pcap, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:
                if self.direct_mode == "direct":
                    raise
        self.direct_active = self.fd_direct >= 0
        hdr = pcap_global_header()
        self.st[: len(hdr)] = np.frombuffer(hdr, dtype=np.uint8)
        self.pos, self.base, self.nrec = len(hdr), 0, 0
        self.last_ts = 0
        self.opened_mono = time.monotonic_ns()

    @staticmethod
    def _pwrite_all(fd: int, buf: mmap.mmap, start: int, end: int, off: int) -> None:
        mv = memoryview(buf)
        try:
            while start < end:
                n = os.pwrite(fd, mv[start:end], off)
                start += n
                off += n
        finally:
            mv.release()

    def _write_job(self, job) -> None:
        """(I/O thread) write one aligned run of a staging buffer, then its records."""
        bufi, n, off, reci, nrec = job
        fd = self.fd_direct if self.fd_direct >= 0 else self.fd_buf
        try:
            self._pwrite_all(fd, self._maps[bufi], 0, n, off)
        except OSError as e:
            if e.errno == errno.EINVAL and fd == self.fd_direct:
                # the file system refused O_DIRECT after all: buffered from now on (and the
                # descriptor closed, or a deleted file's space would stay allocated)
                self.fd_direct = -1
                self.direct_active = False
                os.close(fd)
                self._pwrite_all(self.fd_buf, self._maps[bufi], 0, n, off)
            else:
                raise
        self._append_recs(self._recbufs[reci][:nrec])

    def _append_recs(self, recs: np.ndarray) -> None:
        if len(recs):
            data = memoryview(recs).cast("B")
            off = 0
            while off < len(data):
                off += os.write(self.fd_rec, data[off:])

    def _wait(self) -> None:
        """Finish the write in flight; retry a failed one first. Raises its OSError."""
        if self._failed is not None:
            job = self._failed
            self._write_job(job)
            self._failed = None
        if self._pending is not None:
            fut, job = self._pending
            self._pending = None
            try:
                fut.result()
            except OSError:
                self._failed = job
                raise

    def _recs_within(self, upto: int) -> int:
        """How many pending records lie wholly inside the file's first ``upto`` bytes.
        Records are in offset order, so a scalar binary search on the offsets and one
        check of the last candidate do (no pass over every record)."""
        r, lo, hi = self.recs, 0, self.nrec
        while lo < hi:  # first record starting at or after upto
            mid = (lo + hi) // 2
            if int(r[mid]["offset"]) < upto:
                lo = mid + 1
            else:
                hi = mid
        if lo and int(r[lo - 1]["offset"]) + 16 + int(r[lo - 1]["caplen"]) > upto:
            lo -= 1
        return lo

    def write_blocks(self) -> None:
        """Hand the whole aligned blocks of the current buffer to the I/O thread
        (O_DIRECT where available) and continue in the other buffer."""
        n = self.pos & ~(ALIGN - 1)
        if n == 0:
            return
        self._wait()  # the other buffers must be free (and a failed write retried)
        k = self._recs_within(self.base + n)
        job = (self.cur, n, self.base, self.rcur, k)
        other = 1 - self.cur
        rest = self.pos - n
        if rest:
            self._bufs[other][:rest] = self.st[n : self.pos]
        # the few records of the unaligned tail move to the other record buffer
        left = self.nrec - k
        if left:
            self._recbufs[1 - self.rcur][:left] = self.recs[k : self.nrec]
        if self._pool is not None:
            self._pending = (self._pool.submit(self._write_job, job), job)
        else:
            try:
                self._write_job(job)
            except OSError:
                self._failed = job
                raise
        self.cur = other
        self.st, self.staging = self._bufs[other], self._maps[other]
        self.pos = rest
        self.base += n
        self.rcur = 1 - self.rcur
        self.recs = self._recbufs[self.rcur]
        self.nrec = left

    def flush(self) -> None:
        """Make every packet so far readable: aligned blocks, then the tail
        through the page cache (rewritten by the next direct block write)."""
        self.write_blocks()
        self._wait()
        if self.pos:
            self._pwrite_all(self.fd_buf, self.staging, 0, self.pos, self.base)
        # every pending record's packet is in the file now
        self._append_recs(self.recs[: self.nrec])
        self.nrec = 0

    def close(self) -> Path | None:
        if not self.is_open:
            return None
        self.flush()
        os.fdatasync(self.fd_buf)
        os.fsync(self.fd_rec)
        for fd in (self.fd_direct, self.fd_buf, self.fd_rec):
            if fd >= 0:
                os.close(fd)
        self.fd_direct = self.fd_buf = self.fd_rec = -1
        final_pcap, final_rec, _ = self.store.final_paths(self.iface, self.queue, self.stamp)
        if self.last_ts:
            # a finished file's mtime is its last packet's time (retention ages files by it)
            os.utime(self.pcap_path, ns=(self.last_ts, self.last_ts))
        os.rename(self.rec_path, final_rec)
        os.rename(self.pcap_path, final_pcap)
        fsync_dir(self.dir)
        self.files_closed += 1
        self.pos = self.base = self.nrec = 0
        return final_pcap

    def due(self, now_mono: int) -> bool:
        return self.is_open and (self.file_bytes >= self.rotate_bytes or now_mono - self.opened_mono >= self.rotate_ns)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class Writer:
    def __init__(self, cfg: dict):
        from .xsk import XskSocket, xskmap_set
        from .native import lib as native_lib

        native_lib()
        self.cfg = cfg
        self.iface, self.queue = cfg["iface"], int(cfg["queue"])
        self.batch = int(cfg.get("batch_size", 256))
        self.frame_size = int(cfg.get("frame_size", 4096))
        self.max_rec = 16 + self.frame_size  # upper bound of one record in staging
        self.flush_ns = int(float(cfg.get("flush_interval", 0.5)) * 1e9)
        ring = int(cfg.get("ring_size", 2048))
        # never let packets wait longer than half the RX ring takes to fill at a burst of BURST_PPS
        self.max_wait = min(0.002, ring / 2 / BURST_PPS)
        self.max_wait_ns = int(self.max_wait * 1e9)
        self.batch = min(self.batch, ring // 2)
        self.status_path = Path(cfg["status_file"]) if cfg.get("status_file") else None
        store = Store(cfg["dir"], cfg.get("index_dir"))
        self.sink = PcapSink(store, self.iface, self.queue, float(cfg.get("rotate_seconds", 60)),
                             int(cfg.get("rotate_bytes", 4 << 30)), cfg.get("write_mode", "auto"))
        self.xsk = XskSocket(int(cfg["ifindex"]), self.queue, self.frame_size, int(cfg.get("umem_frames", 4096)),
                             int(cfg.get("ring_size", 2048)))
        xskmap_set(int(cfg["xsks_map_fd"]), self.queue, self.xsk.fd)
        self.stop = False
        self.c = dict(packets=0, wire_bytes=0, file_bytes=0, batches=0, disk_full_waits=0, write_errors=0,
                      bad_descs=0, files_closed=0, last_ts_ns=0)
        self.last_error = ""
        self.started = time.time()

    # -- the loop ---------------------------------------------------------
    def run(self) -> int:
        xsk, sink = self.xsk, self.sink
        poller = select.poll()
        poller.register(xsk.fd, select.POLLIN)
        last_flush = last_status = time.monotonic_ns()
        blocked_until = 0
        draining_since = 0
        c = self.c
        rxb = RxBatcher(xsk)
        self._publish()
        while True:
            now = time.monotonic_ns()
            if self.stop and not draining_since:
                draining_since = now
            if blocked_until and now < blocked_until:
                if draining_since and now - draining_since > 5_000_000_000:
                    # stopping on a full disk: give up; the next start salvages the hidden file's
                    # complete packets
                    break
                # disk full: leave the ring alone (the kernel counts what it drops) and retry soon
                time.sleep(0.02)
                continue
            # housekeeping, whatever the traffic: flush (freshness), rotation, status
            if sink.is_open and (now - last_flush >= self.flush_ns or blocked_until):
                blocked_until = self._guard(sink.flush, now)
                last_flush = now
            if sink.due(now):
                blocked_until = self._guard(self._rotate, now)
            if now - last_status >= 1_000_000_000:
                self._publish()
                last_status = now
            if blocked_until:
                continue
            if not sink.is_open:
                if xsk.rx_available() == 0:
                    if draining_since:
                        break
                    poller.poll(100)  # idle: the kernel wakes us on the first packet
                    continue
                sink.open_new()
                last_flush = now
            if sink.space() < self.batch * self.max_rec:
                blocked_until = self._guard(sink.write_blocks, now)
                if blocked_until:
                    continue
            # many batches in one native call: until a block is staged, room runs out, the
            # next flush is due, or the ring stays empty for a while
            room = min(sink.space(), max(self.max_rec, sink.rotate_bytes - sink.file_bytes + self.max_rec - 1))
            stop_bytes = max(1, sink.block - sink.pos)
            budget = max(1_000_000, min(RUN_BUDGET_NS, self.flush_ns - (now - last_flush)))
            idle = 20_000_000 if draining_since else IDLE_POLL_NS
            res = rxb.run(self.batch, self.max_rec, self.max_wait_ns, budget, idle, sink.st_addr + sink.pos,
                          room, stop_bytes, sink.base + sink.pos,
                          sink.recs_addr + sink.nrec * REC_SIZE, len(sink.recs) - sink.nrec)
            if res.ndone:
                c["packets"] += res.nrecs
                c["wire_bytes"] += res.wire_bytes
                if res.nrecs:
                    c["last_ts_ns"] = sink.last_ts = res.last_ts
                c["bad_descs"] += res.nbad
                c["batches"] += res.batches
                sink.pos += res.nbytes
                sink.nrec += res.nrecs
            if sink.pos >= sink.block:
                blocked_until = self._guard(sink.write_blocks, now)
            if res.reason == RUN_IDLE:
                if draining_since:
                    break
                poller.poll(100)
        self._guard(self._rotate, time.monotonic_ns())
        self._publish(final=True)
        return 0

    def _rotate(self) -> None:
        if self.sink.close() is not None:
            self.c["files_closed"] += 1

    def _guard(self, fn, now: int) -> int:
        """Run a write; on a full disk return a retry deadline instead of failing."""
        try:
            fn()
            return 0
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.c["disk_full_waits"] += 1
                self.last_error = "disk full: waiting for retention to free space (RX drops are counted by the kernel)"
                return now + 50_000_000
            self.c["write_errors"] += 1
            self.last_error = f"write error: {e}"
            return now + 200_000_000

    def _publish(self, final: bool = False) -> None:
        if not self.status_path:
            return
        s = self.sink
        st = dict(self.c)
        st["file_bytes"] = self.c.get("file_bytes", 0)
        doc = {
            "pid": os.getpid(), "iface": self.iface, "queue": self.queue, "time": time.time(),
            "started": self.started, "final": final, "counters": st, "xsk": self.xsk.stats(),
            "open_file": str(s.pcap_path) if s.is_open else None, "open_file_bytes": s.file_bytes if s.is_open else 0,
            "files_closed": s.files_closed, "direct_io": s.direct_active, "last_error": self.last_error,
        }
        tmp = self.status_path.with_name("." + self.status_path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.status_path)

    def close(self) -> None:
        self.sink.shutdown()
        self.xsk.close()


def _set_pdeathsig() -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--json":
        print("usage: python -m stenoxdp.writer --json CONFIG", file=sys.stderr)
        return 2
    cfg = json.loads(argv[1])
    _set_pdeathsig()
    try:
        os.nice(-5)
    except OSError:
        pass
    try:
        w = Writer(cfg)
    except Exception as e:  # reported to the controller, which decides about restarts
        print(f"writer {cfg.get('iface')}/q{cfg.get('queue')}: cannot start: {e}", file=sys.stderr, flush=True)
        return 3
    def _stop(*_):
        w.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("READY", flush=True)
    try:
        return w.run()
    finally:
        w.close()


if __name__ == "__main__":
    sys.exit(main())

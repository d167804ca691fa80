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
from .native.rx import RxBatcher
from .store import Store, fsync_dir

PCAP_NS_MAGIC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
ALIGN = 4096
BURST_PPS = 1.5e6  # the fastest burst a queue is sized for (about this VM's XDP_DROP limit)
IDLE_POLL_NS = 50_000_000  # after this long with an empty ring, sleep in poll() instead


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
        self.recs = np.zeros(staging_size // 76 + 4096, dtype=layout.REC_DTYPE)
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
        bufi, n, off, recs = job
        fd = self.fd_direct if self.fd_direct >= 0 else self.fd_buf
        try:
            self._pwrite_all(fd, self._maps[bufi], 0, n, off)
        except OSError as e:
            if e.errno == errno.EINVAL and fd == self.fd_direct:
                # the file system refused O_DIRECT after all: buffered from now on
                self.fd_direct = -1
                self.direct_active = False
                self._pwrite_all(self.fd_buf, self._maps[bufi], 0, n, off)
            else:
                raise
        self._append_recs(recs)

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

    def _take_recs(self, upto: int) -> np.ndarray:
        """Detach the records of packets wholly inside the file's first ``upto`` bytes."""
        if self.nrec == 0:
            return self.recs[:0].copy()
        r = self.recs[: self.nrec]
        ends = r["offset"] + 16 + r["caplen"]
        k = int(np.searchsorted(ends, upto, side="right"))
        out = r[:k].copy()
        left = self.nrec - k
        if k and left:
            self.recs[:left] = self.recs[k : self.nrec].copy()
        self.nrec = left
        return out

    def write_blocks(self) -> None:
        """Hand the whole aligned blocks of the current buffer to the I/O thread
        (O_DIRECT where available) and continue in the other buffer."""
        n = self.pos & ~(ALIGN - 1)
        if n == 0:
            return
        self._wait()  # the other buffer must be free (and a failed write retried)
        job = (self.cur, n, self.base, self._take_recs(self.base + n))
        other = 1 - self.cur
        rest = self.pos - n
        if rest:
            self._bufs[other][:rest] = self.st[n : self.pos]
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

    def flush(self) -> None:
        """Make every packet so far readable: aligned blocks, then the tail
        through the page cache (rewritten by the next direct block write)."""
        self.write_blocks()
        self._wait()
        if self.pos:
            self._pwrite_all(self.fd_buf, self.staging, 0, self.pos, self.base)
        self._append_recs(self._take_recs(self.base + self.pos))

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
        idle_since = 0
        last_batch = time.monotonic_ns()
        c = self.c
        rxb = RxBatcher(xsk, sink.recs)
        self._publish()
        while True:
            now = time.monotonic_ns()
            if self.stop and not draining_since:
                draining_since = now
            # housekeeping, whatever the traffic: flush (freshness), rotation, status
            if blocked_until and now < blocked_until:
                # disk full: leave the ring alone (the kernel counts what it drops) and retry soon
                time.sleep(0.02)
                continue
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
            n = xsk.rx_available()
            if n == 0:
                if draining_since and now - draining_since > 200_000_000:
                    break
                # Empty ring: sleep briefly while traffic is recent (the next batch builds up);
                # after IDLE_POLL_NS without traffic block in poll(), so an idle link costs nothing.
                if idle_since == 0:
                    idle_since = now
                if now - idle_since < IDLE_POLL_NS:
                    time.sleep(self.max_wait)
                else:
                    poller.poll(20 if draining_since else 100)
                continue
            idle_since = 0
            if n < self.batch and now - last_batch < self.max_wait_ns and not draining_since:
                # A partial batch: wait until a whole one is there or max_wait has passed since
                # the last one, so per-batch costs are shared by many packets at any rate.
                time.sleep((self.max_wait_ns - (now - last_batch)) / 1e9)
                continue
            if not sink.is_open:
                sink.open_new()
                last_flush = now
            n = self.batch
            # near the size limit take fewer packets: a file ends at most one record past rotate_bytes
            room = sink.rotate_bytes - sink.file_bytes
            if room < n * self.max_rec:
                n = max(1, room // self.max_rec)
            if sink.space() < n * self.max_rec:
                blocked_until = self._guard(sink.write_blocks, now)
                if blocked_until:
                    continue
                n = min(n, sink.space() // self.max_rec)
                if n <= 0:
                    continue
            res = rxb(n, sink.st_addr + sink.pos, sink.space(), sink.base + sink.pos, sink.nrec)
            last_batch = now
            if res.ndone:
                good = res.ndone - res.nbad
                c["packets"] += good
                c["wire_bytes"] += res.wire_bytes
                if good:
                    c["last_ts_ns"] = sink.last_ts = res.last_ts
                c["bad_descs"] += res.nbad
                c["batches"] += 1
                sink.pos += res.nbytes
                sink.nrec += good
            if sink.pos >= sink.block:
                blocked_until = self._guard(sink.write_blocks, now)
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

"""Retention: which packet files (with their indexes) go, and deleting them as one crash-safe unit.

Pure planning, thin applying:
  plan_deletions(files, usage, policy, now_ns) -> [Deletion]   pure; tests/unit/test_retention.py
  apply(store, deletions)                                      the executor
  RetentionLoop                                                scan -> plan -> apply, on a short timer,
                                                               at once when free space nears the floor,
                                                               and when poked (e.g. on rotation)

Accounting is derived from the files on every run (a listing + stat, cached for files that can no
longer change), never from counters kept in memory, so a restart loses nothing.

A deletion, step by step (each step idempotent; salvage.py finishes one cut short by a crash):
  1. rename <stamp>.pcap -> .<stamp>.del   (atomic: the indexer and the query engine discover files
                                            by their .pcap name, so the pair vanishes for both at once)
  2. fsync the directory                   (the tombstone is durable before anything is removed)
  3. remove <stamp>.rec and the index directory <stamp>.idx
  4. unlink the tombstone
A file that is already gone (another deleter, a restart) is skipped, so nothing is counted or deleted twice.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import MAX_ROTATE_BYTES, Retention
from .store import IDX_SUFFIX, Store, fsync_dir, stamp_name

log = logging.getLogger("stenoxdp.retention")

TOMB_SUFFIX = ".del"
REC_SIZE = 80
REASONS = ("files", "bytes", "free", "index_free", "age")


# ---------------------------------------------------------------------------- the pure part
@dataclass(frozen=True)
class FileInfo:
    """One completed packet file of an interface, with what deleting it frees."""

    stamp: int            # creation time, ns (its name)
    pcap_bytes: int       # space its packet file takes on the packets file system
    index_bytes: int      # space its index directory takes (on the index file system)
    last_ts: int          # ns of its last packet
    queue: int = 0
    iface: str = ""
    rec_bytes: int = 0    # its .rec records, until indexed (on the packets file system)


@dataclass(frozen=True)
class FsUsage:
    total: int
    free: int             # bytes available to us (f_bavail)


@dataclass(frozen=True)
class Usage:
    packets: FsUsage
    index: FsUsage | None = None  # None: the index lives on the packets file system
    open_bytes: int = 0           # bytes in the files being written (count toward max_bytes)
    reserve: int = 0              # room the open files may still take before they rotate


@dataclass(frozen=True)
class Deletion:
    iface: str
    queue: int
    stamp: int
    pcap_bytes: int
    index_bytes: int
    last_ts: int
    reason: str  # one of REASONS: the first limit that was over when the file was picked
    rec_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.pcap_bytes + self.rec_bytes + self.index_bytes


def free_target(fs: FsUsage, percent: float) -> int:
    """Bytes that must stay free for `percent` % of fs to be free."""
    return math.ceil(fs.total * percent / 100.0) if percent > 0 else 0


def plan_deletions(files: list[FileInfo], usage: Usage, policy: Retention, now_ns: int) -> list[Deletion]:
    """The files to delete, oldest first, so that every limit of policy holds -- and no more.

    files: the interface's completed packet files (any order; taken oldest first by stamp).
    The newest completed file of each queue is never deleted (nor the open files, which are not in
    files), so when the limits cannot be met everything else goes and the newest data stays.
    A file goes when, with the deletions planned before it:
      files       more than max_files completed files remain
      bytes       packets + index (+ open files) exceed max_bytes
      free        the packets fs has less than min_free_percent free (+ usage.reserve for the open files)
      index_free  the index fs (when it is another one) has less than min_free_percent free
      age         its last packet is older than max_age_s (judged per file)
    """
    order = sorted({(f.iface, f.queue, f.stamp): f for f in files}.values(),
                   key=lambda f: (f.stamp, f.iface, f.queue))
    newest: dict[tuple[str, int], int] = {}
    for f in order:
        newest[(f.iface, f.queue)] = f.stamp
    count = len(order)
    total = sum(f.pcap_bytes + f.rec_bytes + f.index_bytes for f in order) + usage.open_bytes
    pk_free = usage.packets.free
    pk_need = free_target(usage.packets, policy.min_free_percent)
    if pk_need:
        pk_need += usage.reserve
    ix_free = usage.index.free if usage.index is not None else 0
    ix_need = free_target(usage.index, policy.min_free_percent) if usage.index is not None else 0
    cutoff = now_ns - int(policy.max_age_s * 1e9) if policy.max_age_s is not None else None

    out: list[Deletion] = []
    for f in order:
        if newest[(f.iface, f.queue)] == f.stamp:
            continue
        reason = None
        if policy.max_files is not None and count > policy.max_files:
            reason = "files"
        elif policy.max_bytes is not None and total > policy.max_bytes:
            reason = "bytes"
        elif pk_free < pk_need:
            reason = "free"
        elif usage.index is not None and ix_free < ix_need:
            reason = "index_free"
        elif cutoff is not None and f.last_ts < cutoff:
            reason = "age"
        if reason is None:
            continue
        out.append(Deletion(f.iface, f.queue, f.stamp, f.pcap_bytes, f.index_bytes, f.last_ts, reason, f.rec_bytes))
        count -= 1
        total -= f.pcap_bytes + f.rec_bytes + f.index_bytes
        if usage.index is None:
            pk_free += f.pcap_bytes + f.rec_bytes + f.index_bytes
        else:
            pk_free += f.pcap_bytes + f.rec_bytes
            ix_free += f.index_bytes
    return out


def adapt_rotate_bytes(fs_total: int, floor_percent: float, n_queues: int,
                       cap: int = MAX_ROTATE_BYTES, floor_bytes: int = 1 << 20) -> int:
    """A file size small enough for fs_total that the free-space floor holds: the files being written
    (one per queue) together take at most 2 % of the file system, and at most half the floor, so
    retention (which keeps room for them) never needs more than one file's worth below the floor.
    Clamped to [1 MiB, cap]; on a big disk this is the 4 GiB cap."""
    share = 0.02
    if floor_percent > 0:
        share = min(share, floor_percent / 100.0 / 2)
    per = int(fs_total * share / max(1, n_queues))
    per = max(floor_bytes, min(cap, per))
    return per - per % 4096 if per > 4096 else per


def effective_rotate_bytes(configured: int, packets_dir: str | os.PathLike, floor_percent: float,
                           n_queues: int) -> int:
    """The rotate size a writer should use: the configured one, lowered on a small file system
    (adapt_rotate_bytes of the file system holding packets_dir, or its nearest existing parent)."""
    p = Path(packets_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        total = fs_usage(p).total
    except OSError:
        return configured
    return min(configured, adapt_rotate_bytes(total, floor_percent, n_queues))


# ---------------------------------------------------------------------------- scanning a store
def _alloc(st: os.stat_result) -> int:
    return st.st_blocks * 512 if st.st_blocks else st.st_size


def _tree_bytes(path: Path) -> int:
    n = 0
    try:
        for root, _dirs, names in os.walk(path):
            for nm in names:
                try:
                    n += _alloc(os.lstat(os.path.join(root, nm)))
                except OSError:
                    pass
    except OSError:
        pass
    return n


def _last_ts_from_rec(rec: Path) -> int | None:
    try:
        with open(rec, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < REC_SIZE:
                return None
            fh.seek(size - size % REC_SIZE - REC_SIZE)
            b = fh.read(REC_SIZE)
        return int.from_bytes(b[8:16], "little")
    except OSError:
        return None


def fs_usage(path: Path) -> FsUsage:
    sv = os.statvfs(path)
    return FsUsage(total=sv.f_blocks * sv.f_frsize, free=sv.f_bavail * sv.f_frsize)


@dataclass
class OpenFile:
    queue: int
    stamp: int
    bytes: int


class Scanner:
    """Lists an interface's files in a store. Sizes of indexed files (which no longer change) are cached
    by path; everything else is read from the file system on every scan."""

    def __init__(self, store: Store, iface: str | None):
        self.store, self.iface = store, iface
        self._cache: dict[str, tuple[int, int, int]] = {}

    def scan(self) -> tuple[list[FileInfo], list[OpenFile]]:
        files: list[FileInfo] = []
        opened: list[OpenFile] = []
        seen = set()
        for pf in self.store.files(self.iface, include_open=True):
            key = str(pf.pcap)
            if not pf.complete:
                try:
                    opened.append(OpenFile(pf.queue, pf.stamp, _alloc(pf.pcap.stat())))
                except OSError:
                    pass
                continue
            seen.add(key)
            hit = self._cache.get(key)
            if hit is None:
                try:
                    st = pf.pcap.stat()
                except OSError:
                    continue  # deleted meanwhile
                ib = rb = 0
                rec_ts = None
                try:
                    rb = _alloc(pf.rec.stat())
                    rec_ts = _last_ts_from_rec(pf.rec)
                except OSError:
                    pass
                indexed = pf.idx.is_dir()
                if indexed:
                    ib = _tree_bytes(pf.idx)
                last = rec_ts if rec_ts else st.st_mtime_ns
                hit = (_alloc(st), ib, last, rb)
                if indexed and not rb and not pf.rec.exists():
                    self._cache[key] = hit
            files.append(FileInfo(pf.stamp, hit[0], hit[1], hit[2], pf.queue, pf.iface, hit[3]))
        for k in list(self._cache):
            if k not in seen:
                del self._cache[k]
        return files, opened


# ---------------------------------------------------------------------------- applying
def tomb_path(store: Store, iface: str, queue: int, stamp: int) -> Path:
    return store.queue_dir(iface, queue) / f".{stamp_name(stamp)}{TOMB_SUFFIX}"


def finish_deletion(store: Store, iface: str, queue: int, stamp: int) -> None:
    """Steps 3-4 of a deletion whose tombstone exists (idempotent)."""
    _pcap, rec, idx = store.final_paths(iface, queue, stamp)
    try:
        rec.unlink()
    except FileNotFoundError:
        pass
    if idx.exists():
        shutil.rmtree(idx, ignore_errors=True)
    try:
        tomb_path(store, iface, queue, stamp).unlink()
    except FileNotFoundError:
        pass


def delete_pair(store: Store, iface: str, queue: int, stamp: int) -> bool:
    """Delete one packet file with its records and index as one unit. False if it was already gone."""
    pcap = store.final_paths(iface, queue, stamp)[0]
    tomb = tomb_path(store, iface, queue, stamp)
    try:
        os.rename(pcap, tomb)
    except FileNotFoundError:
        return False
    fsync_dir(pcap.parent)
    finish_deletion(store, iface, queue, stamp)
    return True


def apply(store: Store, deletions: list[Deletion]) -> list[Deletion]:
    """Carry out a plan; returns the deletions that were done (a file already gone is skipped)."""
    done = []
    seen = set()
    for d in deletions:
        k = (d.iface, d.queue, d.stamp)
        if k in seen:
            continue
        seen.add(k)
        if delete_pair(store, d.iface, d.queue, d.stamp):
            done.append(d)
    return done


# ---------------------------------------------------------------------------- the loop
@dataclass
class RetentionStats:
    runs: int = 0
    files_deleted: int = 0
    bytes_deleted: int = 0
    by_reason: Counter = field(default_factory=Counter)
    bytes_by_reason: Counter = field(default_factory=Counter)
    errors: int = 0
    last_error: str | None = None
    floor_unreachable: int = 0  # runs after which the floor could still not be met (only newest data left)
    recent: list = field(default_factory=list)  # the last deletions (dicts)


class RetentionLoop:
    """Retention of one interface in one store.

    run_once() scans, plans and applies. start() runs it in a thread: at once when poked (call poke()
    on every rotation), every `interval` seconds, and -- checking free space every `tick` seconds, which
    costs one statvfs -- at once when free space comes within a reserve of the floor. The reserve is the
    room the open files may still take before they rotate plus what the observed fill rate writes in
    `horizon` seconds, so a burst is met before it reaches the floor, not after.
    """

    def __init__(self, store: Store, iface: str | None, policy: Retention, rotate_bytes: int | None = None,
                 n_queues: int | None = None, interval: float = 1.0, tick: float = 0.02, horizon: float = 0.3,
                 clock=time.time_ns):
        self.store, self.iface, self.policy = store, iface, policy
        self.rotate_bytes = rotate_bytes
        self.n_queues = n_queues
        self.interval, self.tick, self.horizon, self.clock = interval, tick, horizon, clock
        self.rate = 0.0  # bytes/s the packets file system fills at (EWMA of statvfs samples)
        self.gap = tick  # seconds between checks as they really happen (scheduling, GIL, a slow run)
        self._sample: tuple[float, int] | None = None
        self._pending: list[Deletion] = []
        self.orphans_removed = 0
        self.scanner = Scanner(store, iface)
        self.stats = RetentionStats()
        self.lock = threading.Lock()
        self._ev = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._same_fs: bool | None = None
        self.last: dict = {}

    # -- one run ---------------------------------------------------------------
    def _index_separate(self) -> bool:
        if self._same_fs is None:
            try:
                self._same_fs = os.stat(self.store.packets_root).st_dev == os.stat(self.store.index_root).st_dev
            except OSError:
                return False
        return not self._same_fs

    def effective_rotate_bytes(self, fs_total: int, n_queues: int) -> int:
        a = adapt_rotate_bytes(fs_total, self.policy.min_free_percent, n_queues)
        return min(self.rotate_bytes, a) if self.rotate_bytes else a

    def usage(self, opened: list[OpenFile]) -> Usage:
        pk = fs_usage(self.store.packets_root)
        ix = fs_usage(self.store.index_root) if self._index_separate() else None
        nq = self.n_queues or max(1, len(opened))
        rb = self.effective_rotate_bytes(pk.total, nq)
        reserve = sum(max(0, rb - o.bytes) for o in opened) + self._rate_reserve()
        return Usage(pk, ix, open_bytes=sum(o.bytes for o in opened), reserve=reserve)

    def run_once(self) -> list[Deletion]:
        with self.lock:
            try:
                files, opened = self.scanner.scan()
                use = self.usage(opened)
                plan = plan_deletions(files, use, self.policy, self.clock())
                done = apply(self.store, plan)
                self.orphans_removed += self._sweep_orphan_indexes(files, opened)
            except OSError as e:
                self.stats.errors += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                log.warning("retention %s: %s", self.iface, e)
                return []
            st = self.stats
            st.runs += 1
            for d in done:
                st.files_deleted += 1
                st.bytes_deleted += d.bytes
                st.by_reason[d.reason] += 1
                st.bytes_by_reason[d.reason] += d.bytes
                st.recent.append(asdict(d))
            self._pending.extend(done)
            del self._pending[:-1000]
            del st.recent[:-20]
            if done:
                log.info("retention %s: deleted %d file(s), %d bytes (%s)", self.iface or "*", len(done),
                         sum(d.bytes for d in done), ", ".join(f"{k} {v}" for k, v in
                                                               Counter(d.reason for d in done).items()))
            gone = {(d.iface, d.queue, d.stamp) for d in done}
            left = [f for f in files if (f.iface, f.queue, f.stamp) not in gone]
            try:
                pk_after = fs_usage(self.store.packets_root)
                if pk_after.free < free_target(pk_after, self.policy.min_free_percent):
                    st.floor_unreachable += 1
            except OSError:
                pk_after = use.packets
            self.last = {
                "files": len(left), "open_files": len(opened),
                "packet_bytes": sum(f.pcap_bytes for f in left) + use.open_bytes,
                "index_bytes": sum(f.index_bytes + f.rec_bytes for f in left),
                "oldest_stamp_ns": min((f.stamp for f in left), default=None),
                "oldest_last_ts_ns": min((f.last_ts for f in left), default=None),
                "free_bytes": pk_after.free, "total_bytes": pk_after.total,
                "free_percent": 100.0 * pk_after.free / pk_after.total if pk_after.total else None,
                "reserve_bytes": use.reserve, "open_reserve_bytes": use.reserve - self._rate_reserve(),
                "fill_rate_bps": int(self.rate), "check_gap_s": round(self.gap, 4),
            }
            return done

    # -- the thread --------------------------------------------------------------
    def poke(self) -> None:
        self._ev.set()

    def _rate_reserve(self) -> int:
        """What the observed fill rate writes before retention can act again: at least `horizon` seconds,
        and twice the real gap between checks (a busy machine checks less often than asked)."""
        return int(self.rate * max(self.horizon, 2 * self.gap))

    def _near_floor(self) -> bool:
        try:
            pk = fs_usage(self.store.packets_root)
        except OSError:
            return False
        now = time.monotonic()
        if self._sample is not None:
            dt = now - self._sample[0]
            if dt > 0:
                r = max(0.0, (self._sample[1] - pk.free) / dt)
                self.rate = r if r > self.rate else 0.8 * self.rate + 0.2 * r  # rises at once, decays slowly
                self.gap = dt if dt > self.gap else 0.98 * self.gap + 0.02 * dt
        self._sample = (now, pk.free)
        need = free_target(pk, self.policy.min_free_percent)
        if not need:
            return False
        return pk.free < need + self.last.get("open_reserve_bytes", 0) + self._rate_reserve()

    def _sweep_orphan_indexes(self, files: list[FileInfo], opened: list[OpenFile]) -> int:
        """An index finished by the indexer just after its packet file was deleted: remove it (an index
        is only ever built for a completed packet file, so one without its .pcap is garbage)."""
        have: dict[tuple[str, int], set[int]] = {}
        for f in files:
            have.setdefault((f.iface, f.queue), set()).add(f.stamp)
        n = 0
        for ifc in [self.iface] if self.iface else self.store.ifaces():
            for q in self.store.queues(ifc):
                d = self.store.index_queue_dir(ifc, q)
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for nm in names:
                    if not (nm.endswith(IDX_SUFFIX) and len(nm) == 19 + len(IDX_SUFFIX) and nm[:19].isdigit()):
                        continue
                    stamp = int(nm[:19])
                    if stamp in have.get((ifc, q), ()):
                        continue
                    pcap = self.store.final_paths(ifc, q, stamp)[0]
                    if pcap.exists() or pcap.with_name("." + pcap.name).exists():
                        continue  # completed after the scan
                    shutil.rmtree(d / nm, ignore_errors=True)
                    n += 1
        return n

    def take_done(self) -> list[Deletion]:
        """Deletions done since the last call (for a caller that logs or counts them)."""
        with self.lock:
            out, self._pending = self._pending, []
        return out

    FUTILE_STEP = 1 << 20

    def _loop(self) -> None:
        next_full = 0.0
        futile_free: int | None = None  # free space when a near-floor run found nothing to delete
        while not self._stop.is_set():
            poked = self._ev.wait(self.tick)
            self._ev.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            near = self._near_floor()
            if near and futile_free is not None and self._sample and self._sample[1] > futile_free - self.FUTILE_STEP:
                near = False  # nothing was deletable a moment ago: look again after another MiB, not every tick
            if poked or now >= next_full or near:
                try:
                    done = self.run_once()
                except Exception as e:  # never take the daemon down
                    done = []
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(e).__name__}: {e}"
                    log.warning("retention %s: %s", self.iface, e)
                futile_free = self._sample[1] if (near and not done and self._sample) else None
                next_full = now + self.interval

    def start(self) -> "RetentionLoop":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"retention-{self.iface}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._ev.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def status(self) -> dict:
        st = self.stats
        return {"policy": asdict(self.policy), **{k: v for k, v in self.last.items() if not k.startswith("_")},
                "runs": st.runs, "files_deleted": st.files_deleted, "bytes_deleted": st.bytes_deleted,
                "deleted_by_reason": dict(st.by_reason), "bytes_by_reason": dict(st.bytes_by_reason),
                "errors": st.errors, "last_error": st.last_error, "orphan_indexes_removed": self.orphans_removed, "floor_unreachable": st.floor_unreachable,
                "recent": list(st.recent[-10:])}


_LOOPS: dict[tuple[str, str | None], RetentionLoop] = {}


def enforce(store: Store, policy: Retention, iface: str | None = None, rotate_bytes: int | None = None,
            background: bool = True) -> list[Deletion]:
    """Retention for (store, iface) -- iface None = every interface of the store as one unit.

    Keeps one RetentionLoop per (store, iface) (its size cache and counters carry over) and, with
    background=True, starts its thread on the first call, so retention also reacts between calls.
    Runs once now and returns every deletion done since the previous call."""
    key = (str(store.root), iface)
    loop = _LOOPS.get(key)
    if loop is None or loop.policy != policy:
        if loop is not None:
            loop.stop()
        loop = _LOOPS[key] = RetentionLoop(store, iface, policy, rotate_bytes=rotate_bytes)
        if background:
            loop.start()
    loop.run_once()
    return loop.take_done()


def stop_all() -> None:
    """Stop every loop enforce() started (the daemon calls this on shutdown)."""
    for loop in list(_LOOPS.values()):
        loop.stop()
    _LOOPS.clear()


def loop_for(store: Store, iface: str | None) -> RetentionLoop | None:
    return _LOOPS.get((str(store.root), iface))

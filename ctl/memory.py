"""Memory is sized, not guessed: what a config will lock and use, per queue, per interface, in total,
compared with MemAvailable and RLIMIT_MEMLOCK before anything starts.

Per queue (one AF_XDP socket + one writer process):
  UMEM         frame_size * umem_frames        pinned by the kernel (XDP_UMEM_REG)
  rings        RX ring_size * 16 B, fill umem_frames * 8 B, completion 64 * 8 B (+ a page each)
  writer       staging buffer + record array of the writer (not locked, but resident)

The kernel charges UMEM against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK (root has it).
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, IfaceConfig
from .errors import ConfigError

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
RX_DESC = 16
FILL_DESC = 8
COMPLETION_ENTRIES = 64
# the writer's staging (8 MiB) and its sxdp_rec array (staging // 76 + 4096 records of 80 B); see writer.PcapSink
WRITER_STAGING = 8 << 20
WRITER_RECS = (WRITER_STAGING // 76 + 4096) * 80
# leave this much of MemAvailable to everything else
HEADROOM_FRACTION = 0.10
HEADROOM_MIN = 256 << 20
CAP_IPC_LOCK = 14


def _pages(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def rx_queue_count(name: str, sys_root: str = "/sys/class/net") -> int | None:
    """The NIC's RX queue count (IFLA_NUM_RX_QUEUES as sysfs shows it), None if there is no such interface."""
    d = Path(sys_root) / name / "queues"
    try:
        n = sum(1 for p in d.iterdir() if p.name.startswith("rx-"))
    except OSError:
        return None
    return n or 1


@dataclass
class QueueMemory:
    umem: int
    rings: int
    writer: int

    @property
    def locked(self) -> int:
        return self.umem + self.rings

    @property
    def total(self) -> int:
        return self.umem + self.rings + self.writer


def queue_memory(c: IfaceConfig) -> QueueMemory:
    rings = (_pages(c.ring_size * RX_DESC) + PAGE) + (_pages(c.umem_frames * FILL_DESC) + PAGE) + \
            (_pages(COMPLETION_ENTRIES * FILL_DESC) + PAGE)
    return QueueMemory(umem=c.frame_size * c.umem_frames, rings=rings, writer=WRITER_STAGING + WRITER_RECS)


@dataclass
class IfaceMemory:
    index: int
    name: str
    queues: int
    queues_known: bool  # False: the interface is not here, one queue assumed
    per_queue: QueueMemory

    @property
    def locked(self) -> int:
        return self.queues * self.per_queue.locked

    @property
    def total(self) -> int:
        return self.queues * self.per_queue.total


@dataclass
class MemoryPlan:
    ifaces: list[IfaceMemory] = field(default_factory=list)
    mem_available: int | None = None
    memlock_limit: int | None = None  # None = unlimited
    cap_ipc_lock: bool = False

    @property
    def locked(self) -> int:
        return sum(i.locked for i in self.ifaces)

    @property
    def total(self) -> int:
        return sum(i.total for i in self.ifaces)

    @property
    def budget(self) -> int | None:
        if self.mem_available is None:
            return None
        return max(0, self.mem_available - max(HEADROOM_MIN, int(self.mem_available * HEADROOM_FRACTION)))

    def problems(self) -> list[str]:
        out = []
        b = self.budget
        if b is not None and self.total > b:
            out.append(f"the daemon needs {fmt(self.total)} ({fmt(self.locked)} locked) but only {fmt(b)} of "
                       f"{fmt(self.mem_available)} available memory may be used: {self._what_to_lower(self.total - b)}")
        if not self.cap_ipc_lock and self.memlock_limit is not None and self.locked > self.memlock_limit:
            out.append(f"the daemon would lock {fmt(self.locked)} but RLIMIT_MEMLOCK is {fmt(self.memlock_limit)}: "
                       f"raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in the systemd unit), run as root, "
                       f"or {self._what_to_lower(self.locked - self.memlock_limit)}")
        return out

    def _what_to_lower(self, excess: int) -> str:
        big = max(self.ifaces, key=lambda i: i.total)
        c_frames = big.per_queue.umem
        hint = f"lower iface[{big.index}].umem_frames ({big.name}: {big.queues} queue(s) x {fmt(c_frames)} UMEM)"
        return hint + f" or iface[{big.index}].queues, or capture fewer interfaces (over by {fmt(excess)})"

    def lines(self) -> list[str]:
        out = []
        for i in self.ifaces:
            q = i.per_queue
            note = "" if i.queues_known else " (interface not found here: 1 queue assumed)"
            out.append(f"{i.name}: {i.queues} queue(s){note} x (UMEM {fmt(q.umem)} + rings {fmt(q.rings)} locked, "
                       f"writer {fmt(q.writer)}) = {fmt(i.locked)} locked, {fmt(i.total)} in all")
        lim = "unlimited" if self.memlock_limit is None else fmt(self.memlock_limit)
        if self.cap_ipc_lock:
            lim += " (not applied: CAP_IPC_LOCK)"
        avail = "unknown" if self.mem_available is None else fmt(self.mem_available)
        out.append(f"total: {fmt(self.locked)} locked, {fmt(self.total)} in all; MemAvailable {avail}, "
                   f"RLIMIT_MEMLOCK {lim}")
        return out

    def as_dict(self) -> dict:
        return {"locked": self.locked, "total": self.total, "mem_available": self.mem_available,
                "memlock_limit": self.memlock_limit, "cap_ipc_lock": self.cap_ipc_lock,
                "ifaces": [{"name": i.name, "queues": i.queues, "queues_known": i.queues_known,
                            "umem_per_queue": i.per_queue.umem, "rings_per_queue": i.per_queue.rings,
                            "writer_per_queue": i.per_queue.writer, "locked": i.locked, "total": i.total}
                           for i in self.ifaces],
                "problems": self.problems()}


def fmt(n: int | None) -> str:
    if n is None:
        return "?"
    for u, s in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= s:
            return f"{n / s:.1f} {u}"
    return f"{n} B"


def mem_available(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        for line in open(meminfo):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memlock_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def has_cap_ipc_lock(status: str = "/proc/self/status") -> bool:
    try:
        for line in open(status):
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError):
        pass
    return False


def plan(cfg: Config, queue_count=rx_queue_count, available: int | None | str = "probe",
         limit: int | None | str = "probe", cap: bool | None = None) -> MemoryPlan:
    """What cfg will lock and use. The probes can be replaced (tests)."""
    mp = MemoryPlan(mem_available=mem_available() if available == "probe" else available,
                    memlock_limit=memlock_limit() if limit == "probe" else limit,
                    cap_ipc_lock=has_cap_ipc_lock() if cap is None else cap)
    for idx, c in enumerate(cfg.ifaces):
        n, known = c.queues, True
        if n is None:
            found = queue_count(c.name)
            n, known = (found, True) if found else (1, False)
        mp.ifaces.append(IfaceMemory(idx, c.name, n, known, queue_memory(c)))
    return mp


def check(cfg: Config, **kw) -> MemoryPlan:
    """Refuse (ConfigError) a config that would not fit; returns the plan otherwise."""
    mp = plan(cfg, **kw)
    probs = mp.problems()
    if probs:
        raise ConfigError(probs[0], detail="\n".join(mp.lines()))
    return mp

"""On-disk layout of a store: one module that says where every file lives.

    DIR/packets/<iface>/q<N>/<stamp>.pcap     completed packet file (pcap, ns)
    DIR/packets/<iface>/q<N>/.<stamp>.pcap    packet file being written
    DIR/packets/<iface>/q<N>/.<stamp>.rec     its per-packet index records (sxdp_rec)
    DIR/packets/<iface>/q<N>/<stamp>.rec      records of a completed, not yet indexed file
    INDEX/<iface>/q<N>/<stamp>.idx/           RocksDB index of <stamp>.pcap (INDEX
                                              defaults to DIR/index)

<stamp> is the creation time in ns since the epoch, zero-padded to 19 digits,
so name order is time order. Hidden names (leading '.') are never complete.
Hand-off: the writer renames .rec then .pcap at rotation; the indexer builds
.<stamp>.idx.tmp, renames it to <stamp>.idx, then deletes <stamp>.rec.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

STORE_MANIFEST = "stenoxdp-store.json"
PCAP_SUFFIX = ".pcap"
REC_SUFFIX = ".rec"
IDX_SUFFIX = ".idx"
_STAMP_RE = re.compile(r"^(\.?)(\d{19})\.(pcap|rec|idx)$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


def fsync_dir(path: os.PathLike | str) -> None:
    """Make renames and unlinks in a directory durable (a missing one is skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Is a process with this pid running (status files and pins name their owner)?"""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stamp_name(stamp_ns: int) -> str:
    return f"{stamp_ns:019d}"


def valid_iface_name(name: str) -> bool:
    return bool(_IFACE_RE.match(name)) and name not in (".", "..")


@dataclass(frozen=True)
class PacketFile:
    iface: str
    queue: int
    stamp: int
    pcap: Path  # hidden path while open
    rec: Path  # sidecar records (may not exist)
    idx: Path  # index directory (may not exist)
    complete: bool

    @property
    def indexed(self) -> bool:
        return self.complete and self.idx.is_dir()


class Store:
    """A store root. index_dir may live on another disk."""

    def __init__(self, root: os.PathLike | str, index_dir: os.PathLike | str | None = None):
        self.root = Path(root)
        if index_dir is None:
            index_dir = self._manifest().get("index_dir") or (self.root / "index")
        self.index_root = Path(index_dir)
        self.packets_root = self.root / "packets"

    def _manifest(self) -> dict:
        try:
            return json.loads((self.root / STORE_MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    def init(self) -> "Store":
        self.packets_root.mkdir(parents=True, exist_ok=True)
        self.index_root.mkdir(parents=True, exist_ok=True)
        m = self.root / STORE_MANIFEST
        if not m.exists():
            tmp = m.with_name("." + m.name + ".tmp")
            tmp.write_text(json.dumps({"version": 1, "index_dir": str(self.index_root)}) + "\n")
            os.replace(tmp, m)
        return self

    # -- directories -------------------------------------------------------
    def queue_dir(self, iface: str, queue: int) -> Path:
        return self.packets_root / iface / f"q{queue}"

    def index_queue_dir(self, iface: str, queue: int) -> Path:
        return self.index_root / iface / f"q{queue}"

    def open_paths(self, iface: str, queue: int, stamp: int) -> tuple[Path, Path]:
        """Hidden (pcap, rec) paths for a file being written."""
        d = self.queue_dir(iface, queue)
        s = stamp_name(stamp)
        return d / f".{s}{PCAP_SUFFIX}", d / f".{s}{REC_SUFFIX}"

    def final_paths(self, iface: str, queue: int, stamp: int) -> tuple[Path, Path, Path]:
        d = self.queue_dir(iface, queue)
        s = stamp_name(stamp)
        return d / f"{s}{PCAP_SUFFIX}", d / f"{s}{REC_SUFFIX}", self.index_queue_dir(iface, queue) / f"{s}{IDX_SUFFIX}"

    # -- listing -----------------------------------------------------------
    def ifaces(self) -> list[str]:
        if not self.packets_root.is_dir():
            return []
        return sorted(p.name for p in self.packets_root.iterdir() if p.is_dir() and valid_iface_name(p.name))

    def queues(self, iface: str) -> list[int]:
        d = self.packets_root / iface
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            if p.is_dir() and p.name.startswith("q") and p.name[1:].isdigit():
                out.append(int(p.name[1:]))
        return sorted(out)

    def files(self, iface: str | None = None, include_open: bool = True) -> list[PacketFile]:
        """Every packet file, oldest first (by stamp), across ifaces and queues."""
        out: list[PacketFile] = []
        for ifc in [iface] if iface else self.ifaces():
            for q in self.queues(ifc):
                d = self.queue_dir(ifc, q)
                for name in os.listdir(d):
                    m = _STAMP_RE.match(name)
                    if not m or m.group(3) != "pcap":
                        continue
                    hidden, stamp = m.group(1) == ".", int(m.group(2))
                    if hidden and not include_open:
                        continue
                    s = m.group(2)
                    rec = d / (f".{s}{REC_SUFFIX}" if hidden else f"{s}{REC_SUFFIX}")
                    idx = self.index_queue_dir(ifc, q) / f"{s}{IDX_SUFFIX}"
                    out.append(PacketFile(ifc, q, stamp, d / name, rec, idx, not hidden))
        out.sort(key=lambda f: (f.stamp, f.iface, f.queue))
        return out

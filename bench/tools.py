"""Capture tools under benchmark, behind one small interface, plus the
measuring helpers they share (process-tree CPU from /proc, packet counts from
each tool's own output files).

A Capturer is started on an interface with an output directory and a CPU to
pin to; the harness sends traffic, waits until the output stops growing, reads
the process tree's CPU time, stops the tool and asks it how many packets it
wrote. Each tool counts from its own files, not from its own claims:

* tcpdump: pcap file -> record count (fixed-size fast path, else a walk);
* Stenographer (``stenotype``): raw TPACKET_V3 1 MiB blocks -> the sum of the
  blocks' ``num_pkts``; it only checks its stop flag when a block arrives, so
  after SIGINT a few "poke" frames of a distinct size are sent and subtracted;
* stenoxdp (``stenoctl capture``): pcap files under DIR/packets/.

Every process started here is tracked by PID and killed by PID on every exit
path (``stop`` and ``kill``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")
POKE_SIZE = 98          # frame size of the frames that wake stenotype at stop (never a measured size)
POKE_COUNT = 8


# -- /proc helpers -----------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    rest = raw[raw.rfind(")") + 2:].split()
    return rest  # rest[0] = state (field 3)


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (by PPid), from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(root: int) -> float:
    """User+system CPU seconds of the process tree under ``root``: every live
    process's own utime+stime (all its threads) plus cutime+cstime (children that
    already exited and were reaped)."""
    total = 0
    for p in tree_pids(root):
        f = _stat_fields(p)
        if f is None:
            continue
        # fields 14..17 (utime stime cutime cstime) -> rest[11..14]
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def system_busy() -> float:
    """Busy CPU seconds of the whole machine (all CPUs) from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / CLK_TCK


def dir_bytes(d: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every regular file under d."""
    a = b = 0
    for root, _, files in os.walk(d):
        for n in files:
            try:
                st = os.stat(os.path.join(root, n))
            except OSError:
                continue
            a += st.st_size
            b += st.st_blocks * 512
    return a, b


# -- packet counting -----------------------------------------------------------
def count_pcap(path: Path, frame_size: int | None = None) -> int:
    """Records in a classic pcap file (µs or ns magic, either byte order).
    When every record has caplen == frame_size the count is arithmetic (checked
    against the first and last records); otherwise the records are walked."""
    size = path.stat().st_size
    if size < 24:
        return 0
    with open(path, "rb") as fh:
        hdr = fh.read(24)
        magic = hdr[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            end = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            end = ">"
        else:
            raise ValueError(f"{path}: not a pcap file")
        if frame_size:
            rec = 16 + frame_size
            body = size - 24
            if body % rec == 0:
                n = body // rec
                if n == 0:
                    return 0
                fh.seek(24)
                first = struct.unpack(end + "IIII", fh.read(16))
                fh.seek(24 + (n - 1) * rec)
                last = struct.unpack(end + "IIII", fh.read(16))
                if first[2] == frame_size and last[2] == frame_size:
                    return n
        data = np.fromfile(path, dtype=np.uint8)
    mv = memoryview(data)
    off, n, lim = 24, 0, len(data)
    fmt = end + "I"
    while off + 16 <= lim:  # fallback walk (mixed sizes only)
        (caplen,) = struct.unpack_from(fmt, mv, off + 8)
        if off + 16 + caplen > lim:
            break
        off += 16 + caplen
        n += 1
    return n


def count_pcaps(d: Path, frame_size: int | None = None) -> int:
    return sum(count_pcap(p, frame_size) for p in sorted(d.rglob("*.pcap")) if p.is_file())


def tpacket_blocks(path: Path, block: int = 1 << 20) -> np.ndarray:
    """num_pkts of each 1 MiB TPACKET_V3 block in a stenotype packet file
    (struct tpacket_block_desc: version u32, offset_to_priv u32, then
    tpacket_hdr_v1 {block_status u32, num_pkts u32, ...})."""
    size = path.stat().st_size
    nb = size // block
    if nb == 0:
        return np.zeros(0, np.uint32)
    mm = np.memmap(path, dtype=np.uint32, mode="r", shape=(nb, block // 4))
    out = np.array(mm[:, 3])
    del mm
    return out


def tpacket_sizes(path: Path, index: int, block: int = 1 << 20) -> list[int]:
    """tp_snaplen of every packet in one block (a short walk; used for the last
    block only, to find the poke frames)."""
    with open(path, "rb") as fh:
        fh.seek(index * block)
        b = fh.read(block)
    num, first = struct.unpack_from("<II", b, 12)
    off, sizes = first, []
    for _ in range(num):
        nxt, _sec, _nsec, snap, _len = struct.unpack_from("<IIIII", b, off)
        sizes.append(snap)
        if nxt == 0:
            break
        off += nxt
    return sizes


# -- capturers -----------------------------------------------------------------
class Capturer:
    name = "?"
    label = "?"

    def __init__(self, cpu: int | None = 1):
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None
        self.log: Path | None = None
        self._logfh = None
        self.exit_cpu: float | None = None

    # what the harness calls
    def available(self) -> str | None:
        """None when the tool can run here; else why not (one line)."""
        return None

    def start(self, lab, out: Path, size: int, filter_expr: str | None = None) -> None:
        raise NotImplementedError

    def output_bytes(self) -> int:
        return dir_bytes(self.dir)[0] if self.dir else 0

    def cpu_seconds(self) -> float:
        return tree_cpu(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0

    def live_stats(self) -> dict | None:
        """The tool's own counters while it runs (diagnosis only; counts come from files)."""
        return None

    def stop(self, lab) -> int | None:
        """Stop cleanly; returns the exit code (None if it had to be killed)."""
        return self._signal_stop(signal.SIGINT, 15)

    def count(self, size: int) -> int:
        raise NotImplementedError

    def disk_split(self) -> dict:
        a, alloc = dir_bytes(self.dir)
        return {"bytes": a, "allocated": alloc}

    # helpers
    def _popen(self, cmd: list[str], out: Path) -> None:
        self.dir = out
        self.log = out.parent / f"{out.name}.log"
        self._logfh = open(self.log, "wb")
        pre = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        self.exit_cpu = None
        self.proc = subprocess.Popen(pre + cmd, stdout=self._logfh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            return ""

    def _wait_log(self, needle: str, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start (rc {self.proc.returncode}): {self.log_text()[-400:]}")
            if needle in self.log_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {self.log_text()[-400:]}")

    def _signal_stop(self, sig: int, timeout: float) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.returncode is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
        self._close()
        return rc

    def wait_exit(self, timeout: float) -> int | None:
        """Reap the tool with wait4 so that its whole-life CPU (every thread,
        every reaped child, its exit work such as a last index write) is known:
        sets self.exit_cpu. Returns the exit code, None on timeout."""
        p = self.proc
        if p is None:
            return None
        if p.returncode is not None:
            return p.returncode
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            try:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            except ChildProcessError:
                p.returncode = p.returncode if p.returncode is not None else -1
                return p.returncode
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                self.exit_cpu = ru.ru_utime + ru.ru_stime
                return p.returncode
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        """SIGKILL the whole tree, by PID (always safe to call)."""
        p = self.proc
        if p is not None and p.poll() is None:
            for pid in reversed(tree_pids(p.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._close()

    def _close(self) -> None:
        if self._logfh:
            self._logfh.close()
            self._logfh = None


class Tcpdump(Capturer):
    name = "tcpdump"
    label = "tcpdump -w"

    def available(self):
        return None if shutil.which("tcpdump") else "tcpdump is not installed (make setup)"

    def start(self, lab, out, size, filter_expr=None):
        out.mkdir(parents=True)
        cmd = ["tcpdump", "-i", lab.iface, "-n", "-s", "0", "-Z", "root", "-w", str(out / "t.pcap")]
        if filter_expr:
            cmd.append(filter_expr)
        self._popen(cmd, out)
        self._wait_log("listening on", 15)

    def count(self, size):
        return count_pcaps(self.dir, size)


class Stenotype(Capturer):
    """Debian's stenotype run directly: one thread, packets in DIR/PKT0, index
    in DIR/IDX0, privileges dropped to the stenographer user. Flags kept near the
    defaults; --blocks 256 (a 256 MiB ring instead of 2 GiB, so a short window
    is not absorbed by the ring), --blockage_sec 1 (partial blocks retire after
    1 s instead of 10 s), no rotation within a trial, no seccomp, no watchdog."""
    name = "stenographer"
    label = "Stenographer (stenotype, 1 thread)"
    user = "stenographer"

    def __init__(self, cpu=1, blocks: int = 256):
        super().__init__(cpu)
        self.blocks = blocks

    def available(self):
        if not shutil.which("stenotype"):
            return "stenotype is not installed (Debian package stenographer; make setup)"
        try:
            import pwd
            pwd.getpwnam(self.user)
        except KeyError:
            return "no stenographer user (install the Debian package stenographer)"
        return None

    def start(self, lab, out, size, filter_expr=None):
        for sub in ("PKT0", "IDX0"):
            (out / sub).mkdir(parents=True)
        shutil.chown(out, self.user, self.user)
        for sub in ("PKT0", "IDX0"):
            shutil.chown(out / sub, self.user, self.user)
        cmd = ["stenotype", f"--iface={lab.iface}", f"--dir={out}", "--threads=1", f"--blocks={self.blocks}",
               "--blockage_sec=1", "--fileage_sec=3600", "--seccomp=none", "--no_watchdogs",
               f"--uid={self.user}", f"--gid={self.user}", "-v"]
        if filter_expr:
            cmd.append(f"--filter={compile_steno_filter(lab.iface, filter_expr)}")
        self._popen(cmd, out)
        self._wait_log("starting to process packets", 30)
        time.sleep(0.2)

    def stop(self, lab):
        p = self.proc
        if p is None or p.poll() is not None:
            self._close()
            return p.returncode if p else None
        os.kill(p.pid, signal.SIGINT)
        # stenotype checks its stop flag only when a block arrives: poke it
        poke = poke_frame(POKE_SIZE)
        for _ in range(6):
            try:
                lab.send_frames([poke] * POKE_COUNT, pps=1000)
            except Exception:
                pass
            rc = self.wait_exit(2.5)
            if rc is not None:
                self._close()
                return rc
        self.kill()
        return None

    def count(self, size):
        total = 0
        for f in (self.dir / "PKT0").iterdir():
            if not f.is_file():
                continue
            nums = tpacket_blocks(f)
            total += int(nums.sum())
            nz = np.nonzero(nums)[0]
            for bi in nz[-3:]:  # pokes land in the last block(s) only
                total -= sum(1 for s in tpacket_sizes(f, int(bi)) if s == POKE_SIZE)
        return total

    def disk_split(self):
        pk = dir_bytes(self.dir / "PKT0")
        ix = dir_bytes(self.dir / "IDX0")
        return {"bytes": pk[0] + ix[0], "allocated": pk[1] + ix[1], "packet_bytes": pk[0], "index_bytes": ix[0]}


class Stenoxdp(Capturer):
    """``stenoctl capture --iface IF --dir DIR --dedicated`` in the foreground;
    the whole process tree (controller + writers) is measured; SIGINT stops it."""
    name = "stenoxdp"
    label = "stenoxdp"

    def __init__(self, cpu=1, extra: list[str] | None = None):
        super().__init__(cpu)
        self.extra = extra or []

    def stenoctl(self) -> str | None:
        cand = Path(sys.executable).parent / "stenoctl"
        return str(cand) if cand.exists() else shutil.which("stenoctl")

    def available(self):
        exe = self.stenoctl()
        if not exe:
            return "stenoctl is not on PATH (make setup)"
        r = subprocess.run([exe, "capture", "--help"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or "--iface" not in r.stdout:
            return "stenoctl capture is not implemented yet"
        try:
            from stenoxdp import controller  # noqa: F401
        except Exception as e:  # not there yet: the benchmark skips this tool
            return f"stenoxdp.controller does not import ({type(e).__name__}: {e})"
        return None

    def start(self, lab, out, size, filter_expr=None):
        out.mkdir(parents=True)
        self.status_dir = out.parent / f"{out.name}.status"
        cmd = [self.stenoctl(), "capture", "--iface", lab.iface, "--dir", str(out), "--dedicated",
               "--status-dir", str(self.status_dir)] + self.extra
        if filter_expr:
            cmd += ["--filter", filter_expr]
        self._popen(cmd, out)
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stenoctl capture exited at start (rc {self.proc.returncode}): "
                                   f"{self.log_text()[-600:]}")
            if _xdp_attached(lab.iface) and self._writers_ready():
                time.sleep(0.5)
                return
            time.sleep(0.1)
        raise RuntimeError(f"stenoctl capture not ready after 60s: {self.log_text()[-600:]}")

    def _writers_ready(self) -> bool:
        # each writer publishes <pid>-<iface>-q<N>.json in the status dir once it runs
        sd = getattr(self, "status_dir", None)
        return bool(sd and sd.is_dir() and any(sd.glob("*-q*.json")))

    def count(self, size):
        return count_pcaps(self.dir / "packets", size)

    def disk_split(self):
        pk = dir_bytes(self.dir / "packets")
        ix = dir_bytes(self.dir / "index")
        return {"bytes": pk[0] + ix[0], "allocated": pk[1] + ix[1], "packet_bytes": pk[0], "index_bytes": ix[0]}

    def live_stats(self) -> dict | None:
        st = self.status()
        try:
            ifc = st[0]["ifaces"][0]
            return {"xdp": ifc.get("xdp"), "queues": [{"counters": q.get("counters"), "xsk": q.get("xsk"),
                                                       "restarts": q.get("restarts"), "last_error": q.get("last_error")}
                                                      for q in ifc.get("queues", [])]}
        except (TypeError, LookupError, KeyError):
            return None

    def status(self) -> dict | None:
        exe = self.stenoctl()
        try:
            r = subprocess.run([exe, "status", "--json", "--status-dir", str(self.status_dir)],
                               capture_output=True, text=True, timeout=10)
            return json.loads(r.stdout) if r.returncode == 0 else None
        except Exception:
            return None


TOOLS = {"tcpdump": Tcpdump, "stenographer": Stenotype, "stenoxdp": Stenoxdp}


def _xdp_attached(iface: str) -> bool:
    r = subprocess.run(["ip", "-j", "link", "show", iface], capture_output=True, text=True)
    try:
        j = json.loads(r.stdout)[0]
    except Exception:
        return False
    return "xdp" in j


def poke_frame(size: int) -> bytes:
    """A UDP/IPv4 frame of ``size`` bytes towards the capture port, distinct
    in size from every measured frame."""
    from stenoxdp.lab import HOST_MAC, PEER_MAC, mac_bytes
    ip_len = size - 14
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 17, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    udp = struct.pack("!HHHH", 1024, 9, size - 34, 0)  # src port 1024: passes the filter benchmark's filter too
    return mac_bytes(HOST_MAC) + mac_bytes(PEER_MAC) + b"\x08\x00" + ip + udp + b"P" * (size - 42)


def compile_steno_filter(iface: str, expr: str) -> str:
    """Stenographer's --filter form: `tcpdump -ddd` instructions, each as
    %04x%02x%02x%08x (code, jt, jf, k) -- what its compile_bpf.sh produces."""
    r = subprocess.run(["tcpdump", "-i", iface, "-ddd", expr], capture_output=True, text=True, check=True)
    lines = r.stdout.split("\n")[1:]
    out = []
    for ln in lines:
        if ln.strip():
            c, jt, jf, k = (int(x) for x in ln.split())
            out.append(f"{c:04x}{jt:02x}{jf:02x}{k:08x}")
    return "".join(out)

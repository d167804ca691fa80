"""The lab: network namespaces and veth pairs for tests, the demo and the
benchmarks. Everything it creates carries the prefix ``sxdp`` plus a random
tag, lives in 198.18.0.0/15 and 2001:db8::/32, and is removed on exit (also on
failure). It never touches an interface it did not create.

Two shapes:

* ``Lab(queues=N)``: one namespace; a veth pair whose host end (``lab.iface``)
  is the capture interface (no address: a dedicated capture port) and whose
  other end (``lab.peer``) sits in the namespace. Frames are injected from the
  namespace side (raw AF_PACKET, trafgen, or ordinary sockets towards a
  static neighbour).
* ``Lab(span=True)``: a client and a server namespace talking over their own
  veth pair (real ping, DNS, HTTP, TCP), with every frame of that link
  mirrored (tc mirred, like a SPAN port) onto a third veth pair whose host end
  is the capture interface.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "sxdp"
CLIENT4, SERVER4 = "198.18.0.1", "198.18.0.2"
CLIENT6, SERVER6 = "2001:db8::1", "2001:db8::2"
PEER_MAC = "02:5e:00:00:00:01"   # namespace end of the capture pair
HOST_MAC = "02:5e:00:00:00:02"   # capture interface
CLIENT_MAC = "02:5e:00:00:01:01"
SERVER_MAC = "02:5e:00:00:01:02"


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    return run(cmd, check=check)


class Lab:
    """Context manager; see module docstring."""

    def __init__(self, queues: int = 1, span: bool = False, mtu: int = 1500, tag: str | None = None,
                 ipv6: bool = False):
        self.ipv6 = ipv6  # plain lab: no IPv6 on the injector, so no MLD/ND chatter in exact-frame tests
        self.tag = tag or secrets.token_hex(3)
        self.queues = queues
        self.span = span
        self.mtu = mtu
        self.ns = f"{PREFIX}{self.tag}n"          # injector namespace (capture pair's far end)
        self.iface = f"{PREFIX}{self.tag}"        # capture interface, host side
        self.peer = f"{PREFIX}{self.tag}p"        # its peer, inside self.ns
        self.client_ns = f"{PREFIX}{self.tag}c"
        self.server_ns = f"{PREFIX}{self.tag}s"
        self._procs: list[subprocess.Popen] = []
        self._created_ns: list[str] = []
        self._created_links: list[str] = []

    # -- lifecycle --------------------------------------------------------
    def __enter__(self) -> "Lab":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created_ns.append(name)
        _ip("link", "set", "lo", "up", ns=name)

    def up(self) -> None:
        q = str(self.queues)
        self._add_ns(self.ns)
        _ip("link", "add", self.iface, "numrxqueues", q, "numtxqueues", q, "type", "veth",
            "peer", "name", self.peer, "numrxqueues", q, "numtxqueues", q)
        self._created_links.append(self.iface)
        _ip("link", "set", self.peer, "netns", self.ns)
        _ip("link", "set", self.iface, "address", HOST_MAC, "mtu", str(self.mtu))
        # a dedicated capture port: no IPv6 link-local chatter from the host side
        run(["sysctl", "-qw", f"net.ipv6.conf.{self.iface}.disable_ipv6=1"], check=False)
        _ip("link", "set", self.iface, "up")
        _ip("link", "set", self.peer, "address", PEER_MAC, "mtu", str(self.mtu), ns=self.ns)
        v6off = "0" if self.ipv6 else "1"
        run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.ipv6.conf.{self.peer}.disable_ipv6={v6off}"], check=False)
        _ip("link", "set", self.peer, "up", ns=self.ns)
        # addresses so that ordinary sockets in the namespace can send towards the
        # capture port; the neighbour entries are static so no ARP/ND is needed.
        _ip("addr", "add", f"{CLIENT4}/24", "dev", self.peer, ns=self.ns)
        _ip("neigh", "replace", SERVER4, "lladdr", HOST_MAC, "dev", self.peer, "nud", "permanent", ns=self.ns)
        if self.ipv6:
            _ip("-6", "addr", "add", f"{CLIENT6}/64", "dev", self.peer, "nodad", ns=self.ns)
            _ip("-6", "neigh", "replace", SERVER6, "lladdr", HOST_MAC, "dev", self.peer, "nud", "permanent", ns=self.ns)
        if self.span:
            self._span_up()

    def _span_up(self) -> None:
        c, s = self.client_ns, self.server_ns
        self._add_ns(c)
        self._add_ns(s)
        ca, sa = f"{PREFIX}{self.tag}a", f"{PREFIX}{self.tag}b"
        _ip("link", "add", ca, "type", "veth", "peer", "name", sa)
        self._created_links.append(ca)
        _ip("link", "set", ca, "netns", c)
        _ip("link", "set", sa, "netns", s)
        for ns, dev, mac, a4, a6 in ((c, ca, CLIENT_MAC, CLIENT4, CLIENT6), (s, sa, SERVER_MAC, SERVER4, SERVER6)):
            _ip("link", "set", dev, "address", mac, ns=ns)
            _ip("addr", "add", f"{a4}/24", "dev", dev, ns=ns)
            _ip("-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad", ns=ns)
            _ip("link", "set", dev, "up", ns=ns)
        # the mirror: the injector namespace's peer moves into the client namespace
        _ip("link", "set", self.peer, "netns", c, ns=self.ns)
        _ip("link", "set", self.peer, "up", ns=c)
        run(["ip", "netns", "exec", c, "tc", "qdisc", "add", "dev", ca, "clsact"])
        for direction in ("ingress", "egress"):
            run(["ip", "netns", "exec", c, "tc", "filter", "add", "dev", ca, direction, "protocol", "all",
                 "prio", "1", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", self.peer])
        self.ca, self.sa = ca, sa

    def down(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    p.terminate()
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(timeout=3)
        self._procs.clear()
        for link in self._created_links:
            _ip("link", "del", link, check=False)
        for ns in reversed(self._created_ns):
            _ip("netns", "del", ns, check=False)
        self._created_links.clear()
        self._created_ns.clear()

    # -- running things in namespaces -------------------------------------
    def exec(self, cmd: list[str], ns: str | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", ns or self.ns] + cmd, check=check, timeout=timeout)

    def spawn(self, cmd: list[str], ns: str | None = None, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns or self.ns] + cmd, start_new_session=True, **kw)
        self._procs.append(p)
        return p

    # -- traffic ----------------------------------------------------------
    def send_frames(self, frames: list[bytes], pps: float = 20000, cpu: int | None = None) -> tuple[int, int]:
        """Inject raw Ethernet frames from the namespace end of the capture pair,
        in order, paced at about ``pps`` (pinned to ``cpu`` if given: on veth the
        sending CPU picks the RX queue). Returns (t_start_ns, t_end_ns) of the
        send window in CLOCK_REALTIME; ``self.last_send_ns`` has each frame's
        send time."""
        blob = b"".join(struct.pack("<I", len(f)) + f for f in frames)
        t0 = time.time_ns()
        ns = self.client_ns if self.span else self.ns
        r = subprocess.run(
            ["ip", "netns", "exec", ns] + (["taskset", "-c", str(cpu)] if cpu is not None else [])
            + [sys.executable, "-m", "stenoxdp.labsend", self.peer, str(pps)],
            input=blob, capture_output=True, timeout=max(30, 5 + 2 * len(frames) / max(pps, 1)),
        )
        t1 = time.time_ns()
        if r.returncode != 0:
            raise RuntimeError(f"labsend failed: {r.stderr.decode(errors='replace')}")
        self.last_send_ns = [int(x) for x in r.stdout.split()]
        return t0, t1

    def trafgen(self, size: int, count: int, rate_pps: int | None = None, cpu: int | None = None,
                flows: int = 16, timeout: float = 120) -> subprocess.CompletedProcess:
        """UDP/IPv4 frames of ``size`` bytes (without FCS) from the namespace
        into the capture interface with netsniff-ng's trafgen; bounded by count."""
        cfg = Path(f"/tmp/{self.iface}-trafgen.cfg")
        cfg.write_text(trafgen_config(size, flows))
        cmd = ["trafgen", "-o", self.peer, "-i", str(cfg), "-n", str(count), "--no-sock-mem"]
        if rate_pps:
            cmd += ["-b", f"{rate_pps}pps"]
        if cpu is not None:
            # unthrottled, trafgen forks one sender per CPU and pins each itself
            # (taskset alone does not hold it); -P 1 keeps it on the given core
            cmd += ["-P", "1"]
        pre = ["taskset", "-c", str(cpu)] if cpu is not None else []
        try:
            return run(["ip", "netns", "exec", self.ns] + pre + cmd, check=True, timeout=timeout)
        finally:
            cfg.unlink(missing_ok=True)


def trafgen_config(size: int, flows: int = 16) -> str:
    """A trafgen packet: Ethernet/IPv4/UDP to the capture port, ``size`` bytes,
    source port cycling over ``flows`` values (1024 .. 1024+flows-1, at most
    256) so flows spread over RX queues. trafgen's dinc() is a one-byte counter,
    so the port is written as a constant high byte 0x04 and a counting low byte."""
    payload = max(0, size - 42)
    dmac = ", ".join(f"0x{b}" for b in HOST_MAC.split(":"))
    smac = ", ".join(f"0x{b}" for b in PEER_MAC.split(":"))
    return f"""{{
  {dmac}, {smac}, c16(0x0800),
  0x45, 0, c16({size - 14}), drnd(2), c16(0x4000), 64, 17, csumip(14, 33),
  198, 18, 0, 1,  198, 18, 0, 2,
  0x04, dinc(0, {min(256, max(1, flows)) - 1}), c16(9), c16({size - 34}), c16(0),
  fill(0x41, {payload}),
}}
"""


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces with our prefix left by a killed run (explicit use only)."""
    gone = []
    out = run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


def xdp_attached(iface: str) -> bool:
    """Is an XDP program attached to iface (tests check nothing is left behind)?"""
    return "prog/xdp" in run(["ip", "-d", "link", "show", iface], check=False).stdout


def wait_for(pred, timeout: float = 10.0, step: float = 0.1):
    """Poll pred() until it returns something true or timeout passes; returns its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def have_root() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class CaptureProc:
    """`stenoctl capture` as a child process, for tests, the demo and benchmarks.

    with CaptureProc(iface, store_dir, status_dir, extra=[...]) as cap:
        ... traffic ...
        cap.status()           # the controller's live status document
    # leaving the block sends SIGINT and waits; cap.returncode is the exit code
    """

    def __init__(self, iface: str | list[str], store_dir, status_dir, extra: list[str] | None = None,
                 dedicated: bool = True, ready_timeout: float = 60.0):
        ifaces = [iface] if isinstance(iface, str) else list(iface)
        self.store_dir, self.status_dir = Path(store_dir), Path(status_dir)
        self.cmd = [str(Path(sys.executable).parent / "stenoctl"), "capture", "--dir", str(store_dir),
                    "--status-dir", str(status_dir)]
        for i in ifaces:
            self.cmd += ["--iface", i]
        if dedicated:
            self.cmd.append("--dedicated")
        self.cmd += list(extra or [])
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.stderr = ""

    def __enter__(self) -> "CaptureProc":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._err = open(self.status_dir.parent / f".capture-{os.getpid()}-{id(self)}.log", "w+") \
            if self.status_dir.parent.is_dir() else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True)
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise RuntimeError(f"capture exited early ({self.returncode}): {self.read_log()}")
            if self.status_path() is not None:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"capture did not become ready in {self.ready_timeout}s: {self.read_log()}")

    def status_path(self) -> Path | None:
        if self.proc is None:
            return None
        p = self.status_dir / f"{self.proc.pid}.json"
        return p if p.exists() else None

    def status(self) -> dict:
        import json

        p = self.status_path()
        return json.loads(p.read_text()) if p else {}

    def read_log(self) -> str:
        if hasattr(self._err, "seek"):
            self._err.flush()
            self._err.seek(0)
            return self._err.read()[-4000:]
        return ""

    def writer_pids(self) -> list[int]:
        out = run(["pgrep", "-P", str(self.proc.pid)], check=False).stdout.split()
        return [int(x) for x in out]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.returncode = self.proc.returncode
        self.stderr = self.read_log()
        if hasattr(self._err, "close"):
            try:
                os.unlink(self._err.name)
            except OSError:
                pass
            self._err.close()
        self.proc = None
        return self.returncode

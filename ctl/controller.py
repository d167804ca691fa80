"""The controller: one supervisor for every capture interface.

Per interface it checks that capture may take the interface (dedicated or no
addresses/routes), loads and attaches the XDP program, starts one writer
process per RX queue, and then runs one main loop (STYLE.md, the arbiter):
signal handlers only set a flag; the loop reaps and restarts writers (with a
guard against restart loops), keeps the program's clock offset fresh, runs the
indexer and retention, and publishes status. On SIGINT/SIGTERM it detaches the
XDP programs first (new packets go back to the host stack), lets every writer
drain its ring and finalise its file, and exits 0.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .errors import InterfaceError, NotDedicatedError, StenoError
from .store import Store, pid_alive

log = logging.getLogger("stenoxdp")

RESTART_WINDOW_S = 60.0
RESTART_LIMIT = 5          # writer deaths within the window before capture gives up
WRITER_READY_TIMEOUT_S = 20.0
XDP_PACKET_HEADROOM = 256
PIN_ROOT = "/sys/fs/bpf/stenoxdp"


# ---- interface checks (pure over the facts gathered) ----------------------
@dataclass
class IfaceFacts:
    name: str
    ifindex: int
    rx_queues: int
    addresses: list[str]
    routes: list[str]
    default_route: bool
    up: bool


def iface_facts(name: str) -> IfaceFacts:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise InterfaceError(f"interface {name!r} does not exist (see `ip link`)")
        ifindex = idx[0]
        link = ipr.get_links(ifindex)[0]
        up = bool(link["flags"] & 1)
        nrx = link.get_attr("IFLA_NUM_RX_QUEUES") or 1
        addrs = []
        for a in ipr.get_addr(index=ifindex):
            addr = a.get_attr("IFA_ADDRESS")
            if addr and not ipaddress.ip_address(addr).is_link_local:
                addrs.append(f"{addr}/{a['prefixlen']}")
        routes, default = [], False
        for fam in (2, 10):
            for r in ipr.get_routes(family=fam, oif=ifindex, table=254):
                dst = r.get_attr("RTA_DST")
                plen = r["dst_len"]
                if dst is None and plen == 0:
                    default = True
                    routes.append("default")
                    continue
                if dst and (ipaddress.ip_address(dst).is_link_local or ipaddress.ip_address(dst).is_multicast):
                    continue
                routes.append(f"{dst}/{plen}")
    return IfaceFacts(name, ifindex, int(nrx), addrs, routes, default, up)


def check_dedicated(f: IfaceFacts, dedicated: bool) -> None:
    """Capture redirects every frame to AF_XDP, away from the host's stack:
    refuse an interface the host uses unless the operator says it is dedicated."""
    if dedicated:
        return
    why = []
    if f.default_route:
        why.append("it carries the default route")
    if f.addresses:
        why.append("it has addresses " + ", ".join(f.addresses))
    if f.routes and not f.default_route:
        why.append("it has routes " + ", ".join(f.routes[:4]))
    if why:
        raise NotDedicatedError(
            f"refusing to capture on {f.name}: {'; '.join(why)}. Capture takes every frame away from the host's "
            f"network stack. If {f.name} is a dedicated capture port (SPAN/TAP), pass --dedicated "
            f"(or `dedicated = true` for it in the config); otherwise pick another interface.")


# ---- writers --------------------------------------------------------------
@dataclass
class WriterProc:
    queue: int
    proc: subprocess.Popen | None = None
    deaths: list[float] = field(default_factory=list)
    restarts: int = 0
    last_exit: int | None = None


class IfaceCapture:
    """Everything that runs for one interface."""

    def __init__(self, cfg, status_dir: Path):
        self.cfg = cfg
        self.name = cfg.name
        specs = cfg.stores() if hasattr(cfg, "stores") else [cfg]
        # (Store, retention policy) per store of this interface; queue q writes to store q % len
        self.stores = [(Store(s.dir, s.index_dir), getattr(s, "retention", None)) for s in specs]
        self.store = self.stores[0][0]
        self.status_dir = status_dir
        self.prog = None
        self.writers: dict[int, WriterProc] = {}
        self.facts: IfaceFacts | None = None
        self.failed: str | None = None
        self.filter_text = getattr(cfg, "filter", None) or None
        self.retention_loops: list = []
        self.filter_history: list[dict] = []  # counters of earlier filters (each program counts its own)

    def plan_queues(self) -> list[int]:
        n = self.facts.rx_queues if self.facts else 1
        want = self.cfg.queues or n
        if want > n:
            raise InterfaceError(f"{self.name} has {n} RX queue(s); the config asks for {want}")
        return list(range(want))

    def preflight(self) -> None:
        """Every check on the system that needs no change to it: run for all interfaces before any starts."""
        cfg = self.cfg
        self.facts = iface_facts(cfg.name)
        check_dedicated(self.facts, cfg.dedicated)
        if not self.facts.up:
            raise InterfaceError(f"interface {cfg.name} is down: `ip link set {cfg.name} up` first")
        self.plan_queues()

    def start(self) -> None:
        from . import bpfprog

        cfg = self.cfg
        if self.facts is None:
            self.preflight()
        for st, _ in self.stores:
            st.init()
        self._salvage()
        filter_c = None
        if getattr(cfg, "filter", None) or getattr(cfg, "filter_hex", None):
            from . import cbpf

            flt = cbpf.Filter.from_args(getattr(cfg, "filter", None), getattr(cfg, "filter_hex", None))
            filter_c = flt.c_source()
            self.filter_text = flt.source
        self.max_caplen = cfg.frame_size - XDP_PACKET_HEADROOM - layout.META_LEN
        # the XSKMAP and clock map are pinned so that a new program (a filter change)
        # can replace this one atomically and keep the writers' sockets
        self.pin_dir = f"{PIN_ROOT}/{os.getpid()}-{self.name}"
        self.prog = bpfprog.load(max_caplen=self.max_caplen, filter_c=filter_c, pin_dir=self.pin_dir)
        self.prog.sync_clock()
        queues = self.plan_queues()
        self.n_queues = len(queues)
        try:
            self._start_retention()
            for q in queues:
                self.writers[q] = WriterProc(q)
                self._spawn(self.writers[q], first=True)
            self.prog.attach(cfg.name)
        except BaseException:
            self.stop()
            raise

    def _start_retention(self) -> None:
        from . import retention

        for st, pol in self.stores:
            if pol is None:
                continue
            per_store = sum(1 for q in range(self.n_queues) if self.store_for_queue(q) is st)
            loop = retention.RetentionLoop(st, self.name, pol, rotate_bytes=self.cfg.rotate_bytes,
                                           n_queues=max(1, per_store))
            self.retention_loops.append(loop.start())

    def rotate_bytes_for(self, st: Store, pol) -> int:
        from . import retention

        per_store = sum(1 for q in range(self.n_queues) if self.store_for_queue(q) is st)
        floor = pol.min_free_percent if pol is not None else 0.0
        return retention.effective_rotate_bytes(self.cfg.rotate_bytes, st.packets_root, floor, max(1, per_store))

    def _salvage(self) -> None:
        try:
            from . import salvage
        except ImportError:
            return
        for st, _ in self.stores:
            rep = salvage.salvage_store(st)
            if rep:
                log.info("%s: salvage: %s", self.name, rep)

    def store_for_queue(self, q: int) -> Store:
        return self.stores[q % len(self.stores)][0]

    def writer_config(self, q: int) -> dict:
        c = self.cfg
        st = self.store_for_queue(q)
        pol = self.stores[q % len(self.stores)][1]
        return {
            "iface": c.name, "queue": q, "ifindex": self.facts.ifindex, "dir": str(st.root),
            "index_dir": str(st.index_root),
            "xsks_map_fd": self.prog.xsks_map_fd, "frame_size": c.frame_size, "umem_frames": c.umem_frames,
            "ring_size": c.ring_size, "batch_size": c.batch_size, "rotate_seconds": c.rotate_seconds,
            "rotate_bytes": self.rotate_bytes_for(st, pol), "write_mode": getattr(c, "write_mode", "auto"),
            "flush_interval": getattr(c, "flush_interval", 0.5),
            "status_file": str(self.status_dir / f"{os.getpid()}-{c.name}-q{q}.json"),
        }

    def _spawn(self, w: WriterProc, first: bool = False) -> None:
        wc = self.writer_config(w.queue)
        cmd = [sys.executable, "-m", "stenoxdp.writer", "--json", json.dumps(wc)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             pass_fds=(self.prog.xsks_map_fd,))
        deadline = time.monotonic() + WRITER_READY_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if line.strip() == "READY" or not line:
                break
        if line.strip() != "READY":
            err = ""
            try:
                p.wait(timeout=2)
                err = p.stderr.read().strip()
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            msg = f"writer for {self.name} queue {w.queue} failed to start: {err or 'no READY'}"
            if first:
                raise StenoError(msg)
            raise _WriterBootError(msg)
        # drain stderr in the background so a chatty writer never blocks
        threading.Thread(target=_pump, args=(p.stderr, f"{self.name}/q{w.queue}"), daemon=True).start()
        w.proc = p

    def reap(self) -> None:
        """Restart dead writers; give up on a restart loop."""
        for w in self.writers.values():
            if w.proc is None or w.proc.poll() is None:
                continue
            w.last_exit = w.proc.returncode
            now = time.monotonic()
            w.deaths = [t for t in w.deaths if now - t < RESTART_WINDOW_S] + [now]
            log.warning("%s: writer q%d exited with %s", self.name, w.queue, w.last_exit)
            if len(w.deaths) > RESTART_LIMIT:
                self.failed = (f"writer for {self.name} queue {w.queue} died {len(w.deaths)} times within "
                               f"{RESTART_WINDOW_S:.0f}s; not restarting it (last exit code {w.last_exit})")
                w.proc = None
                continue
            try:
                # a fresh writer salvages nothing itself: its old hidden file is finalised here
                self._finalise_orphans(w.queue)
                self._spawn(w)
                w.restarts += 1
            except (_WriterBootError, StenoError) as e:
                self.failed = str(e)
                w.proc = None

    def _finalise_orphans(self, q: int) -> None:
        try:
            from . import salvage
        except ImportError:
            return
        salvage.salvage_queue(self.store_for_queue(q), self.name, q)

    def detach(self) -> None:
        if self.prog is not None:
            try:
                self.prog.detach(self.name)
            except Exception as e:  # the interface may be gone
                log.warning("%s: detach: %s", self.name, e)

    def stop(self, timeout: float = 15.0) -> None:
        self.detach()
        for w in self.writers.values():
            if w.proc and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in self.writers.values():
            if w.proc:
                try:
                    w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
        if self.prog is not None:
            self.prog.close()
            self.prog = None
        if getattr(self, "pin_dir", None):
            from . import bpfprog

            bpfprog.remove_pins(self.pin_dir)
        for loop in self.retention_loops:
            loop.stop()
        self.retention_loops = []

    # -- live filter change -----------------------------------------------------
    def set_filter(self, expr: str | None, hexform: str | None) -> str:
        """Replace the running program by one with another filter: the new one is
        compiled and verified first (errors leave capture untouched), then attached
        over the old one in one atomic replace; both share the pinned XSKMAP, so
        the writers keep their sockets and no frame is lost or seen twice."""
        from . import bpfprog, cbpf

        flt = cbpf.Filter.from_args(expr, hexform)
        new = bpfprog.load(max_caplen=self.max_caplen, filter_c=flt.c_source() if flt else None,
                           pin_dir=self.pin_dir)
        try:
            new.sync_clock()
            new.attach(self.name)
        except BaseException:
            new.close()
            raise
        old = self.prog
        self.filter_history.append({"filter": self.filter_text, "until": time.time(), "xdp": old.counters()})
        del self.filter_history[:-10]
        old.handover()
        old.close()
        self.prog = new
        self.filter_text = flt.source if flt else None
        return self.filter_text or "(none: every frame)"

    # -- status ---------------------------------------------------------------
    def writer_status(self) -> list[dict]:
        out = []
        for q, w in sorted(self.writers.items()):
            doc = {}
            path = self.status_dir / f"{os.getpid()}-{self.name}-q{q}.json"
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                pass
            doc.update({"queue": q, "alive": bool(w.proc and w.proc.poll() is None), "restarts": w.restarts})
            out.append(doc)
        return out


class _WriterBootError(StenoError):
    pass


def _remove_stale_pins() -> None:
    """Pinned maps of a controller that was killed (<pid>-<iface> with a dead pid)."""
    try:
        entries = os.listdir(PIN_ROOT)
    except OSError:
        return
    from . import bpfprog

    for name in entries:
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            bpfprog.remove_pins(os.path.join(PIN_ROOT, name))


def _pump(stream, tag: str) -> None:
    for line in stream:
        line = line.rstrip()
        if line:
            log.warning("writer %s: %s", tag, line)


class Controller:
    def __init__(self, ifaces: list, status_dir: Path | str = "/run/stenoxdp", server=None,
                 index_interval: float = 1.0):
        self.caps = [IfaceCapture(c, Path(status_dir)) for c in ifaces]
        self.status_dir = Path(status_dir)
        self.status_file = self.status_dir / f"{os.getpid()}.json"
        self.stop_flag = False
        self.server_cfg = server
        self.server = None
        self.index_interval = index_interval
        self.started = time.time()
        self._rates: dict = {}
        self._index_lock = threading.Lock()

    def _signal(self, *_):
        self.stop_flag = True

    def start(self) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_pins()
        names = [c.name for c in self.caps]
        if len(set(names)) != len(names):
            raise StenoError("an interface is listed twice")
        for c in self.caps:  # nothing starts unless every interface can be taken
            c.preflight()
        if self.server_cfg is not None and self.server is None:
            # the listeners bind before any interface is touched: a port in use stops the start cleanly
            for c in self.caps:
                for st, _ in c.stores:
                    st.init()
            self._start_server()
        try:
            for c in self.caps:
                c.start()
        except BaseException:
            for c in self.caps:
                c.stop()
            if self.server is not None:
                self.server.stop()
                self.server = None
            self._remove_status_files()
            raise

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGTERM, self._signal)
        self.start()
        log.info("capturing on %s (Ctrl-C to stop)",
                 ", ".join(f"{c.name} ({len(c.writers)} queue(s)) -> {c.store.root}" for c in self.caps))
        try:
            last_clock = last_index = last_status = 0.0
            indexer = _Background(self._index_all)
            while not self.stop_flag:
                now = time.monotonic()
                for c in self.caps:
                    c.reap()
                failed = [c.failed for c in self.caps if c.failed]
                if failed:
                    log.error("%s", failed[0])
                    self._write_status()
                    return 4
                if now - last_clock >= 1.0:
                    for c in self.caps:
                        c.prog.sync_clock()
                    last_clock = now
                if now - last_index >= self.index_interval:
                    indexer.kick()
                    last_index = now
                self._filter_requests()
                if now - last_status >= 1.0:
                    self._write_status()
                    last_status = now
                time.sleep(0.1)
            return 0
        finally:
            for c in self.caps:
                c.detach()
            for c in self.caps:
                c.stop()
            if self.server is not None:
                try:
                    self.server.stop()
                except Exception:
                    pass
            self._index_all()
            self._remove_status_files()

    def _remove_status_files(self) -> None:
        for p in [self.status_file] + list(self.status_dir.glob(f"{os.getpid()}-*.filter-re*")):
            try:
                p.unlink()
            except OSError:
                pass
        for c in self.caps:
            for q in c.writers:
                try:
                    (self.status_dir / f"{os.getpid()}-{c.name}-q{q}.json").unlink()
                except OSError:
                    pass

    def _filter_requests(self) -> None:
        """`stenoctl filter set` leaves <status_dir>/<pid>-<iface>.filter-request;
        the answer goes to ....filter-result (both JSON)."""
        for c in self.caps:
            req = self.status_dir / f"{os.getpid()}-{c.name}.filter-request"
            if not req.exists():
                continue
            try:
                doc = json.loads(req.read_text())
                req.unlink()
            except (OSError, ValueError):
                continue
            try:
                active = c.set_filter(doc.get("filter"), doc.get("filter_hex"))
                res = {"ok": True, "id": doc.get("id"), "message": f"{c.name}: filter now {active}"}
                log.info("%s", res["message"])
            except StenoError as e:
                res = {"ok": False, "id": doc.get("id"), "message": str(e)}
            except Exception as e:  # a failed load must never take capture down
                res = {"ok": False, "id": doc.get("id"), "message": f"{type(e).__name__}: {e}"}
            out = self.status_dir / f"{os.getpid()}-{c.name}.filter-result"
            tmp = out.with_name("." + out.name + ".tmp")
            tmp.write_text(json.dumps(res))
            os.replace(tmp, out)

    def _start_server(self) -> None:
        from stenoxdp.server import daemon

        s = self.server_cfg
        # the config's "none" means no cap (the server's 0)
        lim = {"max_concurrent": s.max_concurrent, "max_answer_bytes": s.max_answer_bytes or 0,
               "max_seconds": s.max_seconds or 0}
        self.server = daemon.serve([st for c in self.caps for st, _ in c.stores], s.certs, host=s.host, port=s.port,
                                   grpc_port=s.grpc_port, status_dir=self.status_dir, **lim)

    def _index_all(self) -> None:
        # one indexer at a time: the background thread and the final pass at shutdown
        with self._index_lock:
            self._index_all_locked()

    def _index_all_locked(self) -> None:
        try:
            from stenoxdp.indexer.index import index_completed
        except ImportError:
            return
        for c in self.caps:
            for st, _ in c.stores:
                try:
                    index_completed(st)
                except Exception as e:
                    log.warning("%s: indexing %s: %s", c.name, st.root, e)

    def status(self) -> dict:
        now = time.time()
        ifaces = []
        for c in self.caps:
            counters = c.prog.counters() if c.prog else {}
            writers = c.writer_status()
            totals = {"packets": sum(w.get("counters", {}).get("packets", 0) for w in writers),
                      "bytes": sum(w.get("counters", {}).get("wire_bytes", 0) for w in writers)}
            prev = self._rates.get(c.name)
            rates = {"pps": 0.0, "bps": 0.0}
            if prev:
                dt = max(1e-3, now - prev[0])
                rates = {"pps": (totals["packets"] - prev[1]) / dt, "bps": (totals["bytes"] - prev[2]) / dt}
            self._rates[c.name] = (now, totals["packets"], totals["bytes"])
            ifaces.append({
                "name": c.name, "dir": str(c.store.root), "index_dir": str(c.store.index_root),
                "filter": c.filter_text, "filter_history": c.filter_history, "xdp": counters, "queues": writers, "totals": totals, "rates": rates,
                "store": _merge_usage([store_usage(st) for st, _ in c.stores]),
                "retention": [loop.status() for loop in c.retention_loops],
                "failed": c.failed,
            })
        return {"pid": os.getpid(), "started": self.started, "time": now, "ifaces": ifaces}

    def _write_status(self) -> None:
        doc = self.status()
        tmp = self.status_file.with_name("." + self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        os.replace(tmp, self.status_file)


def _merge_usage(us: list[dict]) -> dict:
    if len(us) == 1:
        return us[0]
    out = {k: sum(u[k] for u in us) for k in ("files", "open_files", "packet_bytes", "index_bytes", "indexed")}
    stamps = [u["oldest_stamp_ns"] for u in us if u["oldest_stamp_ns"]]
    out["oldest_stamp_ns"] = min(stamps) if stamps else None
    frees = [u["free_percent"] for u in us if u["free_percent"] is not None]
    out["free_percent"] = min(frees) if frees else None
    out["free_bytes"] = sum(u["free_bytes"] or 0 for u in us)
    out["stores"] = us
    return out


def store_usage(store: Store) -> dict:
    """Files, bytes, time horizon and free space of one store (cheap listing)."""
    files = store.files()
    done = [f for f in files if f.complete]
    pbytes = 0
    for f in files:
        try:
            pbytes += f.pcap.stat().st_size
        except OSError:
            pass
    ibytes = 0
    for f in done:
        if f.idx.is_dir():
            for p in f.idx.iterdir():
                try:
                    ibytes += p.stat().st_size
                except OSError:
                    pass
    try:
        sv = os.statvfs(store.packets_root)
        free_pct = 100.0 * sv.f_bavail / max(1, sv.f_blocks)
        free_bytes = sv.f_bavail * sv.f_frsize
    except OSError:
        free_pct, free_bytes = None, None
    return {"files": len(done), "open_files": len(files) - len(done), "packet_bytes": pbytes, "index_bytes": ibytes,
            "oldest_stamp_ns": files[0].stamp if files else None, "free_percent": free_pct, "free_bytes": free_bytes,
            "indexed": sum(1 for f in done if f.idx.is_dir())}


class _Background:
    """Runs fn in one background thread; kick() asks for another run."""

    def __init__(self, fn):
        self.fn = fn
        self.ev = threading.Event()
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def kick(self) -> None:
        self.ev.set()

    def _loop(self) -> None:
        while True:
            self.ev.wait()
            self.ev.clear()
            try:
                self.fn()
            except Exception as e:  # never take the controller down
                log.warning("background: %s", e)

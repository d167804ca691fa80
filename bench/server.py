"""Server benchmark (issue 4): MB/s of pcap and first-byte latency of one
large answer over HTTPS (Stenographer's API, POST /query, mutual TLS, with
curl as the client -- what stenocurl does) and over gRPC (the project's
client, stenoxdp.server.client.remote_query, in its own process).

The store is imported from a generated pcap of 1500-byte frames, about
--server-mb MB; the query is time-only and selects everything. The server is
``stenoctl serve`` in its own process, on 127.0.0.1, not pinned; the
measuring client runs on CPU 0. Also the capture loss while 10 clients
pull answers: capture_under_load (stenoxdp at a steady rate with 0 and with
10 clients pulling 32 MB answers continuously from the server).
"""
from __future__ import annotations

import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import pcapgen, tools

FRAME = 1500
GRPC_CLIENT = r"""
import sys, time
from stenoxdp.server.client import remote_query
t0 = time.monotonic(); first = None; n = 0
ans = remote_query(sys.argv[1], sys.argv[2], sys.argv[3])
for chunk in ans:
    if first is None:
        first = time.monotonic() - t0
    n += len(chunk)
t = time.monotonic() - t0
print(f"{first if first is not None else -1} {t} {n}")
"""


def _stenoctl() -> str:
    return tools.Stenoxdp().stenoctl() or "stenoctl"


def available() -> str | None:
    exe = _stenoctl()
    for sub in (["import"], ["serve"], ["certs", "init"]):
        r = subprocess.run([exe] + sub + ["--help"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no usage text"])[-1]
            return f"`stenoctl {' '.join(sub)} --help` failed (not implemented yet?): {last[:160]}"
    if not shutil.which("curl"):
        return "curl is not installed (apt-get install curl)"
    return None


def run(mb: float, work: Path, log, repeats: int = 3, load_clients: int = 10, load_pps: int = 100_000,
        load_seconds: float = 4.0, load_repeats: int = 2) -> dict:
    why = available()
    if why:
        log(f"server: skipped: {why}")
        return {"skipped": why}
    exe = _stenoctl()
    store, certs, pcap = work / "sstore", work / "certs", work / "s.pcap"
    n = int(mb * 1e6 / (FRAME + 16))
    res: dict = {"runs": [], "packets": n, "frame": FRAME}
    srv = None
    try:
        pcapgen.write_pcap(pcap, n, time.time_ns(), span_s=600.0, frame=FRAME, seed=2)
        r = subprocess.run([exe, "import", str(pcap), "--dir", str(store)], capture_output=True, text=True, timeout=1800)
        pcap.unlink(missing_ok=True)
        if r.returncode != 0:
            return {"skipped": f"import failed: {r.stderr[-300:]}"}
        r = subprocess.run([exe, "certs", "init", "--dir", str(certs), "--host", "127.0.0.1"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return {"skipped": f"certs init failed: {r.stderr[-300:]}"}
        logf = work / "serve.log"
        srv = subprocess.Popen([exe, "serve", "--dir", str(store), "--certs", str(certs),
                                "--port", "0", "--grpc-port", "0"], stdout=open(logf, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        https = grpc_port = None
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end and (https is None or grpc_port is None):
            if srv.poll() is not None:
                return {"skipped": f"stenoctl serve exited: {logf.read_text()[-300:]}"}
            txt = logf.read_text(errors="replace")
            m = re.search(r"HTTPS.* on [\d.]+:(\d+)", txt)
            g = re.search(r"gRPC on [\d.]+:(\d+)", txt)
            https = int(m.group(1)) if m else None
            grpc_port = int(g.group(1)) if g else None
            time.sleep(0.2)
        if https is None or grpc_port is None:
            return {"skipped": f"stenoctl serve did not report its ports: {logf.read_text()[-300:]}"}
        q = "after 2000-01-01T00:00:00Z"
        for transport in ("https", "grpc"):
            vals = []
            for _ in range(repeats):
                vals.append(_https(certs, https, q) if transport == "https" else _grpc(certs, grpc_port, q))
            ok = [v for v in vals if not v.get("error")]
            row = {"transport": transport + (" (curl, HTTP/2)" if transport == "https" else " (Python client)")}
            if ok:
                for k in ("first_byte_ms", "total_ms", "mb"):
                    row[k] = statistics.median(v[k] for v in ok)
                row["mb_s"] = row["mb"] / (row["total_ms"] / 1e3) if row["total_ms"] else None
            else:
                row["error"] = vals[-1].get("error")
            res["runs"].append(row)
            log(f"server: {row}")
        if load_clients:
            res["under_load"] = capture_under_load(certs, https, load_clients, load_pps, load_seconds, work, log,
                                                   repeats=load_repeats)
    finally:
        if srv is not None and srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
            try:
                srv.wait(timeout=10)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        pcap.unlink(missing_ok=True)
        shutil.rmtree(store, ignore_errors=True)
    return res


def capture_under_load(certs: Path, https: int, clients: int, pps: int, seconds: float, work: Path, log,
                       repeats: int = 2, size: int = 512) -> dict:
    """Capture loss of stenoxdp at a steady rate, with 0 and then ``clients``
    HTTPS clients pulling answers (32 MB each, Steno-Limit-Bytes) from the
    server continuously, on the same machine and disk. The server answers from
    the imported store (not the one being captured), so this measures the
    contention for CPU and disk, not freshness. Capture pinned to CPU 1,
    generator to CPU 0, server and clients unpinned."""
    import threading

    from stenoxdp.lab import Lab

    from . import capture as capbench

    cap = tools.Stenoxdp(cpu=capbench.CAP_CPU)
    why = cap.available()
    if why:
        return {"skipped": why}
    out = {"clients": clients, "pps": pps, "seconds": seconds, "frame": size, "phases": []}
    q = "after 2000-01-01T00:00:00Z"
    with Lab(queues=1) as lab:
        for r in range(repeats):
            for n in (0, clients):
                stop = threading.Event()
                done = {"answers": 0, "bytes": 0, "errors": 0}
                lock = threading.Lock()

                def pull():
                    while not stop.is_set():
                        v = _https(certs, https, q, limit_bytes=32 << 20, pin=None, timeout=60)
                        with lock:
                            if v.get("error"):
                                done["errors"] += 1
                            else:
                                done["answers"] += 1
                                done["bytes"] += int(v["mb"] * 1e6)
                threads = [threading.Thread(target=pull, daemon=True) for _ in range(n)]
                for t in threads:
                    t.start()
                try:
                    tr = capbench.run_trial(lab, cap, work, size, "steady", int(pps * seconds), pps)
                finally:
                    stop.set()
                    for t in threads:
                        t.join(timeout=90)
                row = {"clients": n, "offered_pps": tr.offered_pps, "sent": tr.sent, "captured": tr.captured,
                       "lost": tr.lost, "loss_pct": 100.0 * max(0, tr.lost) / tr.sent if tr.sent else None,
                       "error": tr.error, **{f"client_{k}": v for k, v in done.items()}}
                out["phases"].append(row)
                log(f"server: under load: {row}")
    return out


def _https(certs: Path, port: int, q: str, limit_bytes: int = 0, pin: str | None = "0", timeout: float = 600) -> dict:
    cmd = (["taskset", "-c", pin] if pin is not None else []) + [
           "curl", "-s", "--http2", "--cacert", str(certs / "ca_cert.pem"),
           "--cert", str(certs / "client_cert.pem"), "--key", str(certs / "client_key.pem"),
           "--data-binary", q, "-o", "/dev/null", "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
           f"https://127.0.0.1:{port}/query"]
    if limit_bytes:
        cmd[1:1] = ["-H", f"Steno-Limit-Bytes: {limit_bytes}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"curl ran over {timeout:.0f}s"}
    try:
        code, first, total, size = r.stdout.split()
        if code != "200":
            return {"error": f"HTTP {code}"}
        return {"first_byte_ms": float(first) * 1e3, "total_ms": float(total) * 1e3, "mb": int(size) / 1e6}
    except ValueError:
        return {"error": f"curl rc {r.returncode}: {r.stderr[-200:]}"}


def _grpc(certs: Path, port: int, q: str) -> dict:
    r = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{port}", str(certs), q],
                       capture_output=True, text=True, timeout=600)
    try:
        first, total, size = r.stdout.split()
        return {"first_byte_ms": float(first) * 1e3, "total_ms": float(total) * 1e3, "mb": int(size) / 1e6}
    except ValueError:
        return {"error": f"grpc client rc {r.returncode}: {r.stderr[-300:]}"}

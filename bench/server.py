"""Server benchmark (issue 4): MB/s of pcap and first-byte latency of one
large answer over HTTPS (Stenographer's API, POST /query, mutual TLS, with
curl as the client -- what stenocurl does) and over gRPC (the project's
client, stenoxdp.server.client.remote_query, in its own process).

The store is imported from a generated pcap of 1500-byte frames, about
--server-mb MB; the query is time-only and selects everything. The server is
``stenoctl serve`` in its own process, on 127.0.0.1, pinned to CPU 1; the
client runs on CPU 0. Not measured here yet: capture loss while 10 clients
pull answers (needs capture + serve together; see README).
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


def run(mb: float, work: Path, log, repeats: int = 3) -> dict:
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
        srv = subprocess.Popen(["taskset", "-c", "1", exe, "serve", "--dir", str(store), "--certs", str(certs),
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


def _https(certs: Path, port: int, q: str) -> dict:
    cmd = ["taskset", "-c", "0", "curl", "-s", "--http2", "--cacert", str(certs / "ca_cert.pem"),
           "--cert", str(certs / "client_cert.pem"), "--key", str(certs / "client_key.pem"),
           "--data-binary", q, "-o", "/dev/null", "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
           f"https://127.0.0.1:{port}/query"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
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

"""Query-server benchmark: answer throughput (MB/s of pcap) and first-byte
latency over gRPC and HTTPS for one query, against a running server or one
started here on loopback.

    python -m stenoxdp.server.bench --dir STORE --certs CERTDIR --query 'after 1h ago' [--runs 3] [--json]

HTTPS is measured with curl (as stenoread uses it), gRPC with our client.
Prints one line per transport with medians; --json prints a JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _grpc_once(addr: str, certs_dir, text: str) -> tuple[float, float, int]:
    from .client import remote_query

    t0 = time.perf_counter()
    first = None
    n = 0
    for chunk in remote_query(addr, certs_dir, text, timeout=3600):
        if first is None:
            first = time.perf_counter() - t0
        n += len(chunk)
    return first or 0.0, time.perf_counter() - t0, n


def _https_once(port: int, certs_dir, text: str) -> tuple[float, float, int]:
    fmt = "%{time_starttransfer} %{time_total} %{size_download}"
    r = subprocess.run(["curl", "--silent", "--show-error", "--cert", f"{certs_dir}/client_cert.pem",
                        "--key", f"{certs_dir}/client_key.pem", "--cacert", f"{certs_dir}/ca_cert.pem",
                        "-o", "/dev/null", "-w", fmt, "-d", text, f"https://127.0.0.1:{port}/query"],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"bench: curl failed: {r.stderr.strip()}")
    a, b, c = r.stdout.split()
    return float(a), float(b), int(c)


def run(stores, certs_dir, text: str, runs: int = 3) -> dict:
    from .daemon import serve

    h = serve(stores, certs_dir, port=0, grpc_port=0, audit_stderr=False, max_concurrent=4)
    out = {}
    try:
        for name, fn in (("grpc", lambda: _grpc_once(f"127.0.0.1:{h.grpc_port}", certs_dir, text)),
                         ("https", lambda: _https_once(h.port, certs_dir, text))):
            res = [fn() for _ in range(runs)]
            first = statistics.median(r[0] for r in res)
            total = statistics.median(r[1] for r in res)
            size = res[-1][2]
            out[name] = {"first_byte_s": first, "total_s": total, "bytes": size,
                         "mb_per_s": size / total / 1e6 if total else 0.0, "runs": runs}
    finally:
        h.stop()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stenoxdp.server.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", action="append", required=True, help="store directory (repeatable)")
    ap.add_argument("--certs", required=True, help="certificate directory (stenoctl certs init)")
    ap.add_argument("--query", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from stenoxdp.store import Store

    res = run([Store(d) for d in a.dir], a.certs, a.query, a.runs)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:6s} {v['bytes'] / 1e6:9.1f} MB  {v['mb_per_s']:8.1f} MB/s  first byte {v['first_byte_s'] * 1e3:7.1f} ms  "
                  f"(median of {v['runs']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

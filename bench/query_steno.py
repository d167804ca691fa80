"""Query latency side by side with Stenographer on the same traffic (issue 3).

In one lab (``Lab(queues=1)``) the same frames (a pcap from bench/pcapgen.py,
replayed with tcpreplay from the lab namespace at a paced rate) are sent twice:
once while Debian's ``stenotype`` captures (flags as in bench/tools.py), once
while ``stenoctl capture --dedicated`` captures (they cannot capture at the same
time: XDP redirect takes the frames). Then:

* Stenographer: Debian's ``stenographer`` server serves stenotype's PKT0/IDX0
  (its StenotypePath is a script that only sleeps, so nothing captures again),
  queried with Debian's ``stenoread Q -w -`` (curl + tcpdump);
* stenoxdp: ``stenoctl query Q --dir STORE -w -`` locally, and ``stenoctl serve``
  queried with the same Debian ``stenoread`` (same client for both servers).

Each query is timed from process start to the first byte on stdout and to the
end (median of --repeats); the answers' packets of the replayed frame size are
counted (stenotype's stop "poke" frames, 98 bytes, are excluded and reported).

``python -m bench.query_steno [--packets N] [--pps R] [--repeats K]`` writes
bench/results/stenoquery-<stamp>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from . import pcapgen, tools

FRAME = 100
QUERIES = [
    ("host", f"host {pcapgen.HOT_HOST}"),
    ("port", f"port {pcapgen.HOT_PORT}"),
    ("net/16", f"net {pcapgen.NET16}"),
    # {ago}: whole minutes computed per query so that both captures are inside it
    # (Stenographer's grammar answers "after 140s ago" with 400 Bad Request; minutes work)
    ("time-only", "after {ago}m ago"),
]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def count_frames(data: bytes) -> dict:
    """Records of a classic pcap by caplen: {'frames': n of FRAME bytes, 'other': rest}."""
    if len(data) < 24:
        return {"frames": 0, "other": 0}
    end = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off, n, other = 24, 0, 0
    fmt = end + "I"
    while off + 16 <= len(data):
        (cap,) = struct.unpack_from(fmt, data, off + 8)
        if cap == FRAME:
            n += 1
        else:
            other += 1
        off += 16 + cap
    return {"frames": n, "other": other}


def timed(cmd: list[str], env: dict | None = None, timeout: float = 300) -> dict:
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env)
    first, chunks = None, []
    try:
        while True:
            b = p.stdout.read(1 << 20)
            if not b:
                break
            if first is None:
                first = time.monotonic() - t0
            chunks.append(b)
            if time.monotonic() - t0 > timeout:
                break
        if time.monotonic() - t0 > timeout:
            p.kill()
            p.wait()
            rc, err = -1, f"timed out after {timeout:.0f}s (answer cut)"
        else:
            rc = p.wait(timeout=30)
            err = p.stderr.read().decode(errors="replace").strip()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    total = time.monotonic() - t0
    data = b"".join(chunks)
    out = {"bytes": len(data), **count_frames(data), "first_byte_ms": first * 1e3 if first is not None else None,
           "total_ms": total * 1e3, "rc": rc}
    if rc != 0:
        out["error"] = err[-300:]
    return out


def median_of(runs: list[dict]) -> dict:
    best = dict(runs[-1])
    for k in ("first_byte_ms", "total_ms"):
        v = [r[k] for r in runs if r.get(k) is not None]
        best[k] = statistics.median(v) if v else None
    best["repeats"] = len(runs)
    return best


def replay(lab, pcap: Path, pps: int) -> dict:
    t0 = time.monotonic()
    r = subprocess.run(["ip", "netns", "exec", lab.ns, "taskset", "-c", "0", "tcpreplay", "-q", "-i", lab.peer,
                        f"--pps={pps}", str(pcap)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"tcpreplay failed: {r.stderr[-300:]}")
    return {"seconds": time.monotonic() - t0, "out": r.stdout.strip()[-300:]}


def wait_quiet(cap, settle: float = 1.5, limit: float = 30) -> None:
    last, t_end, t_same = -1, time.monotonic() + limit, time.monotonic()
    while time.monotonic() < t_end:
        b = cap.output_bytes()
        if b != last:
            last, t_same = b, time.monotonic()
        elif time.monotonic() - t_same > settle:
            return
        time.sleep(0.25)


class Procs:
    """Every long-running process started here, killed by PID on exit."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, log: Path, **kw) -> subprocess.Popen:
        fh = open(log, "wb")
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        fh.close()
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                for pid in reversed(tools.tree_pids(p.pid)):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    for pid in reversed(tools.tree_pids(p.pid)):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    p.wait(timeout=5)


def stenoread_env(work: Path, name: str, port: int, certs: Path) -> dict:
    cfg = work / f"{name}-client.json"
    cfg.write_text(json.dumps({"Host": "127.0.0.1", "Port": port, "CertPath": str(certs)}))
    return {**os.environ, "STENOGRAPHER_CONFIG": str(cfg)}


def stenoread_cmd(q: str) -> list[str]:
    return ["stenoread", q, "-w", "-"]


def wait_answer(env: dict, q: str, want: int, limit: float, log) -> float | None:
    """Poll with stenoread until the answer holds ``want`` frames; seconds waited or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        r = timed(stenoread_cmd(q), env=env, timeout=60)
        if r["frames"] >= want:
            return time.monotonic() - t0
        time.sleep(2)
    return None


def run(work: Path, log, packets: int = 50_000, pps: int = 20_000, repeats: int = 3) -> dict:
    from stenoxdp.lab import Lab
    res: dict = {"packets": packets, "pps": pps, "frame": FRAME, "repeats": repeats}
    for name, cls in (("stenotype", tools.Stenotype), ("stenoxdp", tools.Stenoxdp)):
        why = cls().available()
        if why:
            return {"skipped": f"{name}: {why}"}
    for exe in ("stenographer", "stenoread", "tcpreplay", "jq"):
        if not shutil.which(exe) and not Path(f"/usr/sbin/{exe}").exists():
            return {"skipped": f"{exe} is not installed"}
    work.mkdir(parents=True, exist_ok=True)
    pcap = work / "replay.pcap"
    pcapgen.write_pcap(pcap, packets, time.time_ns(), span_s=60.0, frame=FRAME)
    # the exact expected counts per query (except time): from the pcap itself via tcpdump
    expect = {}
    for qn, q in QUERIES:
        if "{" not in q:
            r = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-w", "-", q], capture_output=True)
            expect[qn] = count_frames(r.stdout)["frames"]
    expect["time-only"] = packets
    res["expected"] = expect
    procs = Procs()
    steno_dir, sx_dir = work / "steno", work / "sxstore"
    try:
        t_cap0 = time.time()  # before both captures: "after {now - t_cap0}s ago" holds every packet of both
        with Lab(queues=1) as lab:
            st = tools.Stenotype(cpu=1)
            st.start(lab, steno_dir, FRAME)
            try:
                res["replay_stenotype"] = replay(lab, pcap, pps)
                wait_quiet(st)
            finally:
                res["stenotype_rc"] = st.stop(lab)
            res["stenotype_captured"] = st.count(FRAME)
            log(f"stenoquery: stenotype captured {res['stenotype_captured']:,} of {packets:,}")
            sx = tools.Stenoxdp(cpu=1)
            sx.start(lab, sx_dir, FRAME)
            try:
                res["replay_stenoxdp"] = replay(lab, pcap, pps)
                wait_quiet(sx)
            finally:
                res["stenoxdp_rc"] = sx.stop(lab)
            res["stenoxdp_captured"] = sx.count(FRAME)
            log(f"stenoquery: stenoxdp captured {res['stenoxdp_captured']:,} of {packets:,}")
        # -- Stenographer's server on stenotype's files
        certs = work / "certs"
        r = subprocess.run([tools.Stenoxdp().stenoctl(), "certs", "init", "--dir", str(certs), "--host", "127.0.0.1",
                            "--owner", "stenographer", "--group", "stenographer"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"stenoctl certs init: {r.stderr.strip()[-300:]}")
        fake = work / "fake-stenotype.sh"
        fake.write_text("#!/bin/sh\n# stands in for stenotype: capture already happened\nexec sleep 100000\n")
        fake.chmod(0o755)
        sport = _free_port()
        scfg = work / "steno-server.json"
        scfg.write_text(json.dumps({
            "Threads": [{"PacketsDirectory": str(steno_dir / "PKT0"), "IndexDirectory": str(steno_dir / "IDX0"),
                         "MaxDirectoryFiles": 30000, "DiskFreePercentage": 1}],
            "StenotypePath": str(fake), "Interface": "lo", "Port": sport, "Host": "127.0.0.1",
            "Flags": [], "CertPath": str(certs)}, indent=1))
        slog = work / "stenographer.log"
        t_srv = time.monotonic()
        sp = procs.start(["/usr/sbin/stenographer", "-config", str(scfg), "-syslog=false", "-v", "1"], slog)
        senv = stenoread_env(work, "steno", sport, certs)
        # -- stenoxdp's server
        xport = _free_port()
        xlog = work / "stenoctl-serve.log"
        xp = procs.start([tools.Stenoxdp().stenoctl(), "serve", "--dir", str(sx_dir), "--certs", str(certs),
                          "--port", str(xport)], xlog)
        xenv = stenoread_env(work, "stenoxdp", xport, certs)
        # ready = the small host query returns every expected packet (all files picked up)
        waited = wait_answer(senv, QUERIES[0][1], max(1, expect["host"]), 60, log)
        if waited is None:
            tail = slog.read_text(errors="replace")[-1500:] if slog.exists() else ""
            res["stenographer_error"] = ("stenographer served no/too few packets within 60 s (rc "
                                         f"{sp.poll()}); log tail: {tail}")
            log("stenoquery: " + res["stenographer_error"][:400])
        else:
            res["stenographer_ready_s"] = time.monotonic() - t_srv
            log(f"stenoquery: stenographer serving after {res['stenographer_ready_s']:.1f}s")
        if wait_answer(xenv, QUERIES[0][1], max(1, expect["host"]), 30, log) is None:
            res["stenoxdp_serve_error"] = (f"stenoctl serve answered nothing (rc {xp.poll()}): "
                                           + (xlog.read_text(errors='replace')[-600:] if xlog.exists() else ""))
        rows = res["queries"] = []
        exe = tools.Stenoxdp().stenoctl()
        for qn, qt in QUERIES:
            q = qt.format(ago=int((time.time() - t_cap0 + 5) // 60) + 1)
            row = {"name": qn, "query": q, "expected": expect[qn]}
            row["stenoxdp_local"] = median_of([timed([exe, "query", q, "--dir", str(sx_dir), "-w", "-"])
                                               for _ in range(repeats)])
            if "stenoxdp_serve_error" not in res:
                row["stenoxdp_stenoread"] = median_of([timed(stenoread_cmd(q), env=xenv) for _ in range(repeats)])
            if "stenographer_error" not in res:
                row["stenographer_stenoread"] = median_of([timed(stenoread_cmd(q), env=senv) for _ in range(repeats)])
            rows.append(row)
            log("stenoquery: " + f"`{q}` " + "; ".join(
                f"{k}: {v['frames']} pkts (+{v['other']} other) fb {v['first_byte_ms'] or 0:.0f} ms "
                f"total {v['total_ms']:.0f} ms" for k, v in row.items() if isinstance(v, dict)))
        res["stenographer_log_tail"] = slog.read_text(errors="replace")[-800:] if slog.exists() else ""
    except Exception as e:  # partial results are still written; the error says where it stopped
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"stenoquery: stopped: {res['error'][:300]}")
    finally:
        procs.stop_all()
        pcap.unlink(missing_ok=True)
    return res


COLS = [("stenographer_stenoread", "Stenographer (stenoread)"), ("stenoxdp_stenoread", "stenoxdp serve (stenoread)"),
        ("stenoxdp_local", "stenoxdp local (stenoctl query)")]


def render(res: dict) -> list[str]:
    out = ["## Query side by side with Stenographer (same traffic)", ""]
    if res.get("skipped"):
        return out + [f"Not measured: {res['skipped']}", ""]
    out.append(f"{res['packets']:,} frames of {res['frame']} B (bench/pcapgen.py) replayed with tcpreplay at "
               f"{res['pps']:,} pps into the lab veth, once captured by stenotype "
               f"({res.get('stenotype_captured', 0):,} kept), once by `stenoctl capture --dedicated` "
               f"({res.get('stenoxdp_captured', 0):,} kept). Times: process start to first byte / to end, "
               f"median of {res['repeats']}, in ms. Packets = frames of {res['frame']} B in the answer "
               "(+N = other frames, e.g. stenotype's 98-byte stop pokes).")
    for k in ("error", "stenographer_error", "stenoxdp_serve_error"):
        if res.get(k):
            out += ["", f"**{k}**: {res[k][:600]}"]
    out += ["", "| query | expected | " + " | ".join(f"{t}: pkts, first byte, total" for _, t in COLS) + " |",
            "|---|---:|" + "---:|" * len(COLS)]
    for row in res.get("queries", []):
        cells = []
        for k, _ in COLS:
            v = row.get(k)
            if not v:
                cells.append("—")
                continue
            extra = f" (+{v['other']})" if v.get("other") else ""
            err = " ERR" if v.get("error") else ""
            cells.append(f"{v['frames']:,}{extra}, {v['first_byte_ms'] or 0:.0f}, {v['total_ms']:.0f}{err}")
        out.append(f"| `{row['query']}` | {row['expected']:,} | " + " | ".join(cells) + " |")
    return out + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=50_000)
    ap.add_argument("--pps", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default=f"/var/tmp/stenoxdp-stenoquery-{os.getpid()}")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.query_steno: run as root (lab veth, capture)", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    logs: list[str] = []

    def log(m):
        line = f"{time.strftime('%H:%M:%S')} {m}"
        logs.append(line)
        print(line, flush=True)

    work = Path(a.work)
    t0 = time.monotonic()
    try:
        res = run(work, log, a.packets, a.pps, a.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = time.monotonic() - t0
    res["stamp"] = stamp
    md = render(res)
    print("\n".join(md))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stenoquery-{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
    (out / f"stenoquery-{stamp}.md").write_text("\n".join(md) + f"\n\nSection: {res['seconds']:.0f} s.\n\n```\n"
                                                + "\n".join(logs) + "\n```\n")
    print(f"wrote {out}/stenoquery-{stamp}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

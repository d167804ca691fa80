"""The whole daemon end to end on real lab interfaces (issues 3, 4, 5): real XDP + AF_XDP capture,
the indexer, the query engine, the mutual-TLS servers, salvage after kill -9, config refusals.

Every test runs `stenoctl capture` or `stenoctl run --config` as a real process tree (controller +
one writer per queue) and queries what it stored through `stenoctl query`, the engine, Debian's
`stenoread`, or our gRPC client. Frames carry a marker (b"SXDM" + iface tag + id) in a UDP payload
so every answer can be checked packet by packet."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stenoxdp.lab import HOST_MAC, PEER_MAC, CaptureProc, mac_bytes, run, wait_for, xdp_attached

pytestmark = pytest.mark.netns

STENOCTL = str(Path(sys.executable).parent / "stenoctl")
MAGIC = b"SXDM"


# ---- frames and pcap ------------------------------------------------------------------------
def frame(tag: int, n: int, dport: int = 9, size: int = 120) -> bytes:
    """UDP/IPv4 198.18.0.1 -> 198.18.0.2, payload MAGIC + tag (1 byte) + id (u32)."""
    body = MAGIC + struct.pack(">BI", tag, n)
    udp = struct.pack(">HHHH", 40000 + tag, dport, 8 + len(body), 0) + body
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, b"\xc6\x12\x00\x01",
                     b"\xc6\x12\x00\x02") + udp
    f = mac_bytes(HOST_MAC) + mac_bytes(PEER_MAC) + b"\x08\x00" + ip
    return f + bytes(max(0, size - len(f)))


def marker(pkt: bytes) -> tuple[int, int] | None:
    i = pkt.find(MAGIC)
    if i < 0 or i + 9 > len(pkt):
        return None
    return struct.unpack_from(">BI", pkt, i + 4)


def parse_pcap(data: bytes, complete_only: bool = False) -> list[tuple[int, bytes]]:
    """(ts_ns, frame) per record of a ns (or µs) pcap; complete_only: stop at a cut-short tail."""
    if len(data) < 24:
        assert complete_only, "pcap shorter than its global header"
        return []
    magic = struct.unpack_from("<I", data)[0]
    assert magic in (0xA1B23C4D, 0xA1B2C3D4), "not a little-endian pcap"
    mul = 1 if magic == 0xA1B23C4D else 1000  # tcpdump -w (as stenoread runs it) writes microseconds
    out, off = [], 24
    while off + 16 <= len(data):
        sec, nsec, caplen, _wire = struct.unpack_from("<IIII", data, off)
        nsec *= mul
        if off + 16 + caplen > len(data):
            assert complete_only, f"record at {off} cut short"
            break
        out.append((sec * 10**9 + nsec, data[off + 16: off + 16 + caplen]))
        off += 16 + caplen
    if not complete_only:
        assert off == len(data), "trailing bytes after the last record"
    return out


def markers(pkts) -> list[tuple[int, int]]:
    return [m for _, p in pkts if (m := marker(p)) is not None]


def on_disk(store: Path) -> dict[tuple[int, int], int]:
    """Marker -> queue of every complete record in every packet file (open or closed) of a store right now."""
    seen = {}
    for pat in ("packets/*/q*/*.pcap", "packets/*/q*/.*.pcap"):
        for f in store.glob(pat):
            try:
                data = f.read_bytes()
            except FileNotFoundError:
                continue  # renamed at rotation meanwhile: its new name is globbed too (or next time)
            q = int(f.parent.name[1:])
            seen.update((m, q) for m in markers(parse_pcap(data, complete_only=True)))
    return seen


def query_cli(q: str, dirs: list[Path], *extra: str, timeout: float = 60) -> bytes:
    cmd = [STENOCTL, "query", q, "-w", "-"] + [a for d in dirs for a in ("--dir", str(d))] + list(extra)
    r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Traceback" not in r.stderr
    return r.stdout


def query_local(q: str, dirs: list[Path], **kw) -> bytes:
    from stenoxdp.indexer.engine import query
    from stenoxdp.store import Store

    return b"".join(query([Store(d) for d in dirs], q, **kw))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def write_config(path: Path, status: Path, ifaces: list[dict], server: dict | None = None) -> Path:
    lines = [f"status_dir = {toml_value(status)}", ""]
    for i in ifaces:
        i = dict(i)
        ret = i.pop("retention", None)
        lines.append("[[iface]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in i.items()]
        if ret:
            lines.append("[iface.retention]")
            lines += [f"{k} = {toml_value(v)}" for k, v in ret.items()]
        lines.append("")
    if server:
        lines.append("[server]")
        lines += [f"{k} = {toml_value(v)}" for k, v in server.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def daemon(cfg: Path, status: Path) -> CaptureProc:
    """`stenoctl run --config cfg` as a CaptureProc (ready when its status file exists)."""
    cap = CaptureProc("unused", status.parent / "unused", status)
    cap.cmd = [STENOCTL, "run", "--config", str(cfg)]
    return cap


@pytest.fixture
def dirs(tmp_path):
    status = tmp_path / "run"
    status.mkdir()
    return tmp_path, status


# ---- 1. freshness (issue 3) -----------------------------------------------------------------
def test_fresh_packets_answered_from_open_file_then_same_from_index(lab, dirs):
    tmp, status = dirs
    store = tmp / "store"
    frames = [frame(1, i, dport=7001, size=100 + i) for i in range(60)] + [frame(1, 1000 + i) for i in range(40)]
    with CaptureProc(lab.iface, store, status, extra=["--rotate-seconds", "60", "--queues", "1"]) as cap:
        lab.send_frames(frames, pps=2000)
        t_sent = time.monotonic()
        got = b""
        while time.monotonic() - t_sent < 5.0:
            got = query_cli("udp and port 7001", [store])
            if len(parse_pcap(got)) >= 60:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - t_sent
        fresh = parse_pcap(got)
        assert [m for m in markers(fresh)] == [(1, i) for i in range(60)], \
            f"the open file's packets were not all answered within 5 s ({len(fresh)} of 60 after {seconds:.1f} s)"
        assert [p for _, p in fresh] == frames[:60]
        # they came from the open file: nothing has rotated yet
        assert list(store.glob(f"packets/{lab.iface}/q0/.*.pcap"))
        assert not list(store.glob(f"packets/{lab.iface}/q0/[0-9]*.pcap"))
        # the whole answer (time-only query) too
        assert len(parse_pcap(query_cli("after 10m ago", [store]))) == 100
    assert cap.returncode == 0, cap.stderr
    assert not xdp_attached(lab.iface)
    # stopping rotated the file and the controller indexed it: the same query now runs on the index
    assert not list(store.glob("packets/*/*/.*")), "hidden files left after a clean stop"
    done = list(store.glob(f"packets/{lab.iface}/q0/*.pcap"))
    assert len(done) == 1
    assert (store / "index" / lab.iface / "q0" / (done[0].stem + ".idx")).is_dir()
    assert not done[0].with_suffix(".rec").exists(), "indexed file still answered from its records"
    assert query_cli("udp and port 7001", [store]) == got, "index path and open-file path answer differently"


# ---- 5. bad configs (issue 5) ---------------------------------------------------------------
def _bad_run(cfg: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([STENOCTL, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=timeout)


def test_bad_configs_named_and_nothing_started(lab, dirs):
    tmp, status = dirs
    good = {"name": lab.iface, "dir": str(tmp / "s"), "dedicated": True, "queues": 1}
    cases = [
        ("unknown key", [dict(good, rotate_secs=5)], None, "iface[0].rotate_secs"),
        ("bad percent", [dict(good, retention={"min_free_percent": 120})], None,
         "iface[0].retention.min_free_percent"),
        ("missing dir", [{"name": lab.iface, "dedicated": True}], None, "iface[0].dir"),
        ("wrong type", [dict(good, queues="two")], None, "iface[0].queues"),
        ("bad frame size", [dict(good, frame_size=3000)], None, "iface[0].frame_size"),
        ("same iface twice", [good, dict(good, dir=str(tmp / "t"))], None, "iface[1].name"),
        ("no such interface", [good, dict(good, name="sxdpnosuch9", dir=str(tmp / "t"))], None, "sxdpnosuch9"),
        ("queues beyond the NIC", [dict(good, queues=4)], None, "queue"),
        ("server without certs", [good], {"port": free_port()}, "server.certs"),
        ("server certs missing", [good], {"port": free_port(), "certs": str(tmp / "nocerts")}, "server.certs"),
        ("server host not an IP", [good], {"port": free_port(), "host": "sensor", "certs": str(tmp)},
         "server.host"),
    ]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cdir = tmp / "certs"
    subprocess.run([STENOCTL, "certs", "init", "--dir", str(cdir), "--host", "127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    cases += [
        # found only when binding: the listeners bind before any interface is touched
        ("server port in use", [good], {"port": busy.getsockname()[1], "certs": str(cdir)},
         f"127.0.0.1:{busy.getsockname()[1]}"),
        ("interface down", [good], None, "down"),
    ]
    for what, ifaces, server, needle in cases:
        cfg = write_config(tmp / "bad.toml", status, ifaces, server)
        if what == "interface down":
            run(["ip", "link", "set", lab.iface, "down"])
        try:
            r = _bad_run(cfg)
        finally:
            run(["ip", "link", "set", lab.iface, "up"])
        assert r.returncode != 0, f"{what}: accepted"
        assert needle in r.stderr, f"{what}: message does not name {needle!r}: {r.stderr!r}"
        assert "Traceback" not in r.stderr, f"{what}: traceback"
        assert len(r.stderr.strip().splitlines()) <= 3, f"{what}: more than a short message: {r.stderr!r}"
        assert not xdp_attached(lab.iface), f"{what}: XDP program left attached"
        left = [p for p in (tmp / "s", tmp / "t") if p.exists() and any(p.rglob("*.pcap"))]
        assert not left, f"{what}: packet files created: {left}"
        assert not [p for p in status.glob("*.json")], f"{what}: a status file was published"
    busy.close()


# ---- 2. several interfaces in one daemon (issue 5) ------------------------------------------
def test_three_ifaces_one_daemon_merged_and_per_iface_answers(lab_factory, dirs):
    tmp, status = dirs
    labs = [lab_factory(), lab_factory(), lab_factory()]
    stores = [tmp / "a", tmp / "b", tmp / "c"]
    rets = [{"min_free_percent": 0, "max_files": 1000}, {"min_free_percent": 1, "max_age_s": "7d"},
            {"min_free_percent": 2, "max_bytes": "1GiB"}]
    cdir = tmp / "certs"
    r = subprocess.run([STENOCTL, "certs", "init", "--dir", str(cdir), "--host", "127.0.0.1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    gport = free_port()
    cfg = write_config(tmp / "three.toml", status, [
        {"name": lb.iface, "dir": str(st), "dedicated": True, "queues": 1, "rotate_seconds": rs, "retention": rt}
        for lb, st, rs, rt in zip(labs, stores, (1, 60, 2), rets)],
        server={"grpc_port": gport, "certs": str(cdir)})
    remote = ["--server", f"127.0.0.1:{gport}", "--certs", str(cdir)]
    per_round = 20
    with daemon(cfg, status) as cap:
        doc = cap.status()
        assert [i["name"] for i in doc["ifaces"]] == [lb.iface for lb in labs]
        assert [i["dir"] for i in doc["ifaces"]] == [str(s) for s in stores]
        # rounds of traffic, iface after iface: the timestamps interleave across the interfaces
        for rnd in range(5):
            for tag, lb in enumerate(labs, 1):
                lb.send_frames([frame(tag, rnd * per_round + i) for i in range(per_round)], pps=4000)
        want = {(t, n) for t in (1, 2, 3) for n in range(5 * per_round)}
        got = wait_for(lambda: (a := parse_pcap(query_local("udp and port 9", stores))) and set(markers(a)) >= want
                       and a, timeout=10)
        assert got, "not every packet of the three interfaces was answered within 10 s"
        # the CLI over all stores of the daemon: one merged answer, in time order
        allq = parse_pcap(query_cli("udp and port 9", stores))
        assert sorted(markers(allq)) == sorted(want) and len(allq) == len(want), "lost or duplicated packets"
        ts = [t for t, _ in allq]
        assert ts == sorted(ts), "merged answer not in time order"
        tags = [m[0] for m in markers(allq)]
        switches = sum(1 for x, y in zip(tags, tags[1:]) if x != y)
        assert switches >= 14, f"answers of the interfaces were not interleaved by time ({switches} switches)"
        # the same over every store named in the daemon's config
        assert parse_pcap(query_cli("udp and port 9", [], "--config", str(cfg))) == allq
        # the daemon's server answers over all of its stores: the same merged answer
        assert parse_pcap(query_cli("udp and port 9", [], *remote)) == allq
        # within each interface, the send order is kept
        for t in (1, 2, 3):
            assert [n for tg, n in markers(allq) if tg == t] == list(range(5 * per_round))
        # one interface only: --iface over all stores, or that interface's store
        for t, (lb, st) in enumerate(zip(labs, stores), 1):
            only = parse_pcap(query_cli("udp and port 9", stores, "--iface", lb.iface))
            assert markers(only) == [(t, n) for n in range(5 * per_round)]
            assert [p for p in parse_pcap(query_cli("udp", [st]))] == only
            assert parse_pcap(query_cli("udp and port 9", [], *remote, "--iface", lb.iface)) == only
            # the merged answer restricted to this interface is the per-interface answer
            assert [x for x in allq if marker(x[1])[0] == t] == only
        # each interface kept its own retention policy; `stenoctl status` shows each one's horizon and disk
        doc = cap.status()
        for i, rt in zip(doc["ifaces"], rets):
            assert i["retention"], f"{i['name']}: no retention loop"
        r = subprocess.run([STENOCTL, "status", "--json", "--status-dir", str(status)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        (sdoc,) = json.loads(r.stdout)
        assert [i["name"] for i in sdoc["ifaces"]] == [lb.iface for lb in labs]
        for i in sdoc["ifaces"]:
            assert i["store"]["oldest_stamp_ns"] and i["store"]["packet_bytes"] > 0 and i["store"]["free_bytes"] > 0
            assert i["totals"]["packets"] >= 5 * per_round
        r = subprocess.run([STENOCTL, "status", "--status-dir", str(status)], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, COLUMNS="200"))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert all(lb.iface in r.stdout for lb in labs), r.stdout
    assert cap.returncode == 0, cap.stderr
    for lb in labs:
        assert not xdp_attached(lb.iface)
    # after the clean stop (every file rotated and indexed) the answer is the same
    assert parse_pcap(query_cli("udp and port 9", stores)) == allq


# ---- 3. the daemon serves while it captures (issue 4) ---------------------------------------
def _https_query(port: int, cdir: Path, q: str, timeout: float = 60) -> bytes:
    import http.client

    ctx = ssl.create_default_context(cafile=str(cdir / "ca_cert.pem"))
    ctx.load_cert_chain(str(cdir / "client_cert.pem"), str(cdir / "client_key.pem"))
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        c.request("POST", "/query", body=q.encode())
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:200])
        return body
    finally:
        c.close()


def test_daemon_serves_stenoread_grpc_and_parallel_clients_while_capturing(lab, dirs):
    from stenoxdp.server.client import remote_query

    tmp, status = dirs
    store, cdir = tmp / "store", tmp / "certs"
    r = subprocess.run([STENOCTL, "certs", "init", "--dir", str(cdir), "--host", "127.0.0.1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    port, gport = free_port(), free_port()
    cfg = write_config(tmp / "srv.toml", status, [
        {"name": lab.iface, "dir": str(store), "dedicated": True, "queues": 1, "rotate_seconds": 60,
         "ring_size": 4096, "umem_frames": 8192}],  # ~1 s of ring at 4 kpps: this VM's 2 cores are shared
        server={"host": "127.0.0.1", "port": port, "grpc_port": gport, "certs": str(cdir), "max_concurrent": 20})
    marked = [frame(3, i, dport=7003, size=80 + (i % 700)) for i in range(300)]
    with daemon(cfg, status) as cap:
        lab.send_frames(marked, pps=3000)
        want = wait_for(lambda: (a := query_local("udp and port 7003", [store])) and len(parse_pcap(a)) == 300 and a,
                        timeout=10)
        assert want and [p for _, p in parse_pcap(want)] == marked
        # Debian's unmodified stenoread, configured like a Stenographer client
        sc = tmp / "steno-client.json"
        sc.write_text(json.dumps({"Host": "127.0.0.1", "Port": port, "CertPath": str(cdir)}))
        out = tmp / "stenoread.pcap"
        r = subprocess.run(["stenoread", "udp and port 7003", "-w", str(out)], capture_output=True, timeout=60,
                           env=dict(os.environ, STENOGRAPHER_CONFIG=str(sc)))
        assert r.returncode == 0, r.stderr
        # (stenoread pipes the answer through tcpdump -w: microsecond timestamps, same frames)
        assert parse_pcap(out.read_bytes()) == [(t // 1000 * 1000, p) for t, p in parse_pcap(want)]
        # stenoctl query --server (gRPC, mutual TLS) returns the local answer byte for byte
        assert query_cli("udp and port 7003", [], "--server", f"127.0.0.1:{gport}", "--certs", str(cdir)) == want
        # N parallel clients (gRPC and HTTPS) for S seconds while capture runs at 4000 pps; the issue's
        # full run: SXDP_CLIENTS=50 SXDP_LOAD_SECONDS=60 (default 20 x 15 s keeps the suite short)
        n_cli = int(os.environ.get("SXDP_CLIENTS", "20"))
        secs = float(os.environ.get("SXDP_LOAD_SECONDS", "15"))
        n_bg = int(4000 * secs)
        tg: dict = {}
        sender = threading.Thread(target=lambda: tg.setdefault("r", lab.trafgen(200, n_bg, rate_pps=4000)))
        before = wait_for(lambda: (i := cap.status()["ifaces"][0])["totals"]["packets"] >= 300 and i, timeout=10)
        assert before, "status never counted the 300 packets"
        sender.start()
        t_end = time.monotonic() + secs

        def client(i: int) -> tuple[int, list[str]]:
            # the clients run on the sensor here: at a lower priority than capture, as the server's own work
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            ok, bad = 0, []
            while time.monotonic() < t_end:
                try:
                    if i % 2:
                        ans = b"".join(remote_query(f"127.0.0.1:{gport}", cdir, "udp and port 7003", timeout=60))
                    else:
                        ans = _https_query(port, cdir, "udp and port 7003")
                except Exception as e:  # an error is a wrong answer; say which
                    bad.append(f"client {i}: {type(e).__name__}: {e}")
                    continue
                if ans == want:
                    ok += 1
                else:
                    bad.append(f"client {i}: answer of {len(ans)} bytes differs ({len(parse_pcap(ans, True))} pkts)")
            return ok, bad

        with ThreadPoolExecutor(n_cli) as ex:
            results = list(ex.map(client, range(n_cli)))
        sender.join(timeout=secs + 60)
        assert tg.get("r") is not None and tg["r"].returncode == 0
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= before["totals"]["packets"] + n_bg,
                 timeout=10)
        after = cap.status()["ifaces"][0]
    assert cap.returncode == 0, cap.stderr
    assert not xdp_attached(lab.iface)
    bad = [b for _, bs in results for b in bs]
    answered = sum(ok for ok, _ in results)
    assert not bad, f"{len(bad)} wrong answers, e.g. {bad[:3]}"
    assert answered >= n_cli and all(ok >= 1 for ok, _ in results), [ok for ok, _ in results]
    # capture lost nothing meanwhile
    x, q = after["xdp"], after["queues"][0]
    assert x["redirect_fail"] == 0 and x["seen_pkts"] == x["redirected"]
    assert q["xsk"]["rx_dropped"] == 0 and q["xsk"]["rx_ring_full"] == 0, q["xsk"]
    assert after["totals"]["packets"] - before["totals"]["packets"] == n_bg, "capture lost packets under query load"
    print(f"\n{answered} complete answers from {n_cli} clients in {secs:g} s while capturing {n_bg} packets")


# ---- 4. kill -9 at random moments (issue 5) ---------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _store_problems(store: Path, iface: str) -> list[str]:
    """Orphans and leftovers once the daemon has stopped cleanly."""
    probs = []
    for q in (0, 1):
        probs += _queue_problems(store / "packets" / iface / f"q{q}", store / "index" / iface / f"q{q}")
    return probs


def _queue_problems(qd: Path, idir: Path) -> list[str]:
    probs = []
    pcaps = {p.stem for p in qd.glob("[0-9]*.pcap")}
    probs += [f"hidden file {p.name}" for p in qd.glob(".*")]
    probs += [f"records left {p.name}" for p in qd.glob("*.rec")]
    probs += [f"other file {p.name}" for p in qd.iterdir() if p.suffix not in (".pcap", ".rec")]
    idxs = {p.name[: -len(".idx")] for p in idir.glob("[0-9]*.idx")} if idir.is_dir() else set()
    probs += [f"pcap without index {s}" for s in sorted(pcaps - idxs)]
    probs += [f"index without pcap {s}" for s in sorted(idxs - pcaps)]
    if idir.is_dir():
        probs += [f"index leftover {p.name}" for p in idir.iterdir() if not p.name.endswith(".idx") or
                  p.name.startswith(".")]
    return probs


def _missing(snap: dict, got: list, where: dict, deleting: bool) -> set:
    """Markers of snap not in got. With retention deleting, a queue may have lost its oldest packets:
    per queue, only those at or after its oldest packet still answered count."""
    gotset = set(got)
    miss = set()
    for q in (0, 1):
        kept = [m[1] for m in got if where.get(m) == q]
        if deleting and not kept:
            continue  # every file of this queue seen so far was deleted (the newest came after the snapshot)
        oldest = min(kept) if deleting else -1
        miss |= {m for m, qq in snap.items() if qq == q and m not in gotset and m[1] >= oldest}
    return miss


def test_kill9_rounds_keep_every_written_packet(lab_factory, dirs):
    lab = lab_factory(queues=2)
    tmp, status = dirs
    store = tmp / "store"
    base = {"name": lab.iface, "dir": str(store), "dedicated": True, "queues": 2, "rotate_seconds": 1,
            "rotate_bytes": "256KiB", "flush_interval": 0.2}
    cfg = write_config(tmp / "crash.toml", status, [dict(base, retention={"min_free_percent": 0})])
    # the second half of the rounds runs with retention deleting the oldest files all the time (max_files),
    # so kills also land around deletions; then only a prefix (the oldest packets) of each queue may go
    cfg_ret = write_config(tmp / "crash-ret.toml", status, [dict(base, retention={"min_free_percent": 0,
                                                                                   "max_files": 6})])
    deleting = False
    rng = random.Random(int(os.environ.get("SXDP_CRASH_SEED", "5")))
    stop = threading.Event()
    sent = [0]

    def sender():  # 8 flows from alternating CPUs: both RX queues (and writers) get traffic
        while not stop.is_set():
            n = sent[0]
            lab.send_frames([frame(10 + i % 8, n + i, size=300) for i in range(100)], pps=1500, cpu=(n // 100) % 2)
            sent[0] = n + 100

    snapshots: dict = {}
    # 24 rounds: 12 one writer of the two (the controller restarts it), 4 controller only, 4 everything at once,
    # 4 everything at once and then the next start killed at a random moment too
    modes = ["writer", "writer", "controller", "writer", "startup", "all"] * 4
    log = []
    cap = daemon(cfg, status)
    cap.start()
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        for rnd, mode in enumerate(modes):
            time.sleep(rng.uniform(0.2, 1.2))
            wpids = cap.writer_pids()
            assert wpids, f"round {rnd}: no writer running"
            snap = on_disk(store)  # everything on disk now must survive the kill
            if mode == "writer":
                assert len(wpids) == 2, f"round {rnd}: writers {wpids}"
                restarts = sum(q.get("restarts", 0) for q in cap.status()["ifaces"][0]["queues"])
                os.kill(rng.choice(wpids), signal.SIGKILL)
                ok = wait_for(lambda: (qs := cap.status()["ifaces"][0]["queues"]) and all(q["alive"] for q in qs)
                              and sum(q.get("restarts", 0) for q in qs) > restarts, timeout=15)
                assert ok, f"round {rnd}: writer not restarted: {cap.read_log()}"
            else:
                if mode == "controller":
                    os.kill(cap.proc.pid, signal.SIGKILL)
                else:
                    os.killpg(cap.proc.pid, signal.SIGKILL)  # controller and writers at once
                cap.proc.wait(timeout=10)
                # the writers end too (PDEATHSIG), finishing their files unless killed themselves
                assert wait_for(lambda: not any(_pid_alive(p) for p in wpids), timeout=15), \
                    f"round {rnd}: writers {wpids} outlived their controller"
                assert xdp_attached(lab.iface)  # the dead controller's program is still there ...
                cap.stop()
                deleting = deleting or rnd >= len(modes) // 2
                if mode == "startup":
                    # a start killed at a random moment: loading, salvaging, spawning writers or just running
                    p = subprocess.Popen([STENOCTL, "run", "--config", str(cfg_ret if deleting else cfg)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                    time.sleep(rng.uniform(0.0, 2.5))
                    kids = [int(x) for x in run(["pgrep", "-P", str(p.pid)], check=False).stdout.split()]
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)
                    assert wait_for(lambda: not any(_pid_alive(k) for k in kids), timeout=15)
                cap = daemon(cfg_ret if deleting else cfg, status)
                cap.start()  # ... and the new daemon replaces it
                assert xdp_attached(lab.iface)
            got = markers(parse_pcap(query_local("udp and port 9", [store])))
            snapshots.update(snap)
            missing = _missing(snap, got, snapshots, deleting)
            assert not missing, f"round {rnd} ({mode}): {len(missing)} packets on disk before the kill are gone"
            assert len(got) == len(set(got)), f"round {rnd} ({mode}): duplicated packets"
            log.append((mode, len(snap)))
        ret = cap.status()["ifaces"][0]["retention"]
        assert deleting and sum(r.get("files_deleted", 0) for r in ret) > 0, f"retention deleted nothing: {ret}"
    finally:
        stop.set()
        t.join(timeout=30)
        time.sleep(0.5)
        cap.stop()
    assert cap.returncode == 0, cap.stderr
    assert not xdp_attached(lab.iface), "XDP program left attached after the last stop"
    assert not list(status.glob("*-q*.json")) or all(not _pid_alive(int(p.name.split("-")[0]))
                                                    for p in status.glob("*-q*.json"))
    # no orphans, every packet file has its index and nothing else is left
    probs = _store_problems(store, lab.iface)
    assert not probs, probs[:10]
    # indexes agree with packet files: the query through the indexes returns exactly what the files hold
    files = sorted((store / "packets" / lab.iface).glob("q*/*.pcap"))
    in_files = sorted(x for f in files for x in parse_pcap(f.read_bytes()))
    answer = query_cli("udp and port 9", [store])
    got = parse_pcap(answer)
    assert sorted(got) == in_files, "the indexed answer differs from the packet files"
    assert [t for t, _ in got] == sorted(t for t, _ in got)
    assert not _missing(snapshots, markers(got), snapshots, True)
    assert len(markers(got)) == len(set(markers(got)))
    assert {f.parent.name for f in files} == {"q0", "q1"}
    assert len(files) <= 6 + 2, f"{len(files)} files kept with max_files 6"
    # and rebuilding every index from the packet files changes nothing
    r = subprocess.run([STENOCTL, "reindex", "--dir", str(store)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert query_cli("udp and port 9", [store]) == answer
    print(f"\n{len(modes)} kill -9 rounds, {len(files)} files, {len(got)} packets kept of {sent[0]} sent; "
          f"per round on disk at the kill: {[n for _, n in log][:6]}...")


# ---- migration: a Stenographer config runs the whole daemon (issues 4 and 5) -------------------
def test_stenographer_config_captures_and_serves_stenoread(lab_factory, dirs):
    lab = lab_factory(queues=2)
    tmp, _status = dirs
    cdir = tmp / "certs"
    subprocess.run([STENOCTL, "certs", "init", "--dir", str(cdir), "--host", "127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    t0, t1 = tmp / "thread0", tmp / "thread1"
    # one file is both the daemon's config and the clients' (as on a Stenographer sensor)
    sc = tmp / "config"
    sc.write_text(json.dumps({
        "Threads": [{"PacketsDirectory": str(t0), "IndexDirectory": str(t0 / "idx"), "DiskFreePercentage": 1},
                    {"PacketsDirectory": str(t1), "IndexDirectory": str(t1 / "idx"), "MaxDirectoryFiles": 500}],
        "StenotypePath": "/usr/bin/stenotype", "Interface": lab.iface, "Port": free_port(), "Host": "127.0.0.1",
        "Flags": ["--fileage_sec=60"], "CertPath": str(cdir)}))
    status = Path("/run/stenoxdp")  # a Stenographer config has no status dir: the default
    cap = CaptureProc(lab.iface, tmp / "unused", status)
    cap.cmd = [STENOCTL, "run", "--stenographer-config", str(sc)]
    sent = []
    cap.start()
    try:
        for k, cpu in enumerate((0, 1, 0, 1)):  # 16 flows (source ports) over the two RX queues
            fr = [frame(10 + i % 16, k * 50 + i, dport=7006) for i in range(50)]
            lab.send_frames(fr, pps=3000, cpu=cpu)
            sent += fr
        want = wait_for(lambda: (a := query_local("udp and port 7006", [t0, t1])) and len(parse_pcap(a)) == 200
                        and a, timeout=10)
        assert want, "not every packet answered from the two thread directories"
        assert sorted(p for _, p in parse_pcap(want)) == sorted(sent)
        per_dir = [len(parse_pcap(query_local("udp and port 7006", [d]))) for d in (t0, t1)]
        files = sorted(str(f.relative_to(tmp)) for f in tmp.glob("thread*/packets/*/*/*.pcap"))
        assert all(per_dir) and sum(per_dir) == 200, f"queues not spread over the threads' dirs: {per_dir} {files}"
        out = tmp / "r.pcap"
        r = subprocess.run(["stenoread", "udp and port 7006", "-w", str(out)], capture_output=True, timeout=60,
                           env=dict(os.environ, STENOGRAPHER_CONFIG=str(sc)))
        assert r.returncode == 0, r.stderr
        assert parse_pcap(out.read_bytes()) == [(t // 1000 * 1000, p) for t, p in parse_pcap(want)]
    finally:
        cap.stop(signal.SIGTERM)  # as systemd stops it
    assert cap.returncode == 0, cap.stderr
    assert "ignored" in cap.stderr and "StenotypePath" in cap.stderr, "what was ignored is not said"
    assert not xdp_attached(lab.iface)
    # after the stop every file is indexed in its thread's IndexDirectory and answered from there, no scan
    assert list(t0.glob("idx/*/q0/*.idx")) and list(t1.glob("idx/*/q1/*.idx"))
    r = subprocess.run([STENOCTL, "query", "udp and port 7006", "--dir", str(t0), "--dir", str(t1), "-w", "-"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert r.stdout == want

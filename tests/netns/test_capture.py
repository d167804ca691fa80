"""Issue 2: the capture path on real veth pairs with real XDP + AF_XDP.

Every test starts `stenoctl capture` as a real process on a lab interface,
injects frames from the namespace, stops it with SIGINT and reads the packet
files it left (plain pcap) back."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from stenoxdp.lab import HOST_MAC, PEER_MAC, CaptureProc, mac_bytes, run, wait_for, xdp_attached

pytestmark = pytest.mark.netns

DST, SRC = mac_bytes(HOST_MAC), mac_bytes(PEER_MAC)


# ---- frames -----------------------------------------------------------------
def eth(payload: bytes, ethertype: int, tags: list[tuple[int, int]] = ()) -> bytes:
    hdr = DST + SRC
    for tpid, vid in tags:
        hdr += struct.pack(">HH", tpid, vid)
    return hdr + struct.pack(">H", ethertype) + payload


def ipv4(payload: bytes, proto: int, src=b"\xc6\x12\x00\x01", dst=b"\xc6\x12\x00\x02", opts: bytes = b"",
         frag: int = 0, ihl: int | None = None) -> bytes:
    hl = 20 + len(opts)
    ihl = hl // 4 if ihl is None else ihl
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, hl + len(payload), 1, frag, 64, proto, 0, src, dst) + opts + payload


def ipv6(payload: bytes, nh: int) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), nh, 64,
                       bytes.fromhex("20010db8000000000000000000000001"),
                       bytes.fromhex("20010db8000000000000000000000002")) + payload


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0) + data


def pad(frame: bytes, size: int) -> bytes:
    return frame + bytes(max(0, size - len(frame)))


def tagged(n: int, size: int) -> bytes:
    """A UDP/IPv4 frame of ``size`` bytes whose payload carries the id n."""
    body = struct.pack(">I", n)
    f = eth(ipv4(udp(40000 + n % 1000, 9, body), 17), 0x0800)
    return pad(f, size)


def known_frames() -> list[bytes]:
    out = []
    sizes = [60, 64, 65, 128, 256, 511, 512, 1000, 1400, 1514]
    for i, size in enumerate(sizes):
        tag = struct.pack(">I", 0xA0000000 + i)
        out.append(pad(eth(ipv4(udp(1000 + i, 53, tag), 17), 0x0800), size))
        out.append(pad(eth(ipv4(tcp(2000 + i, 80, tag), 6), 0x0800), size))
        out.append(pad(eth(ipv6(udp(3000 + i, 443, tag), 17), 0x86DD), size))
        out.append(pad(eth(ipv4(udp(4000 + i, 123, tag), 17), 0x0800, [(0x8100, 100 + i)]), size))
        out.append(pad(eth(ipv6(tcp(5000 + i, 22, tag), 6), 0x86DD, [(0x88A8, 200), (0x8100, 300 + i)]), size))
    # ICMP echo, ICMPv6 echo, ARP, IPv4 with options
    out.append(pad(eth(ipv4(b"\x08\x00\x00\x00\x12\x34\x00\x01" + b"ping", 1), 0x0800), 98))
    out.append(pad(eth(ipv6(b"\x80\x00\x00\x00\x12\x34\x00\x01" + b"ping6", 58), 0x86DD), 118))
    arp = struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, SRC, b"\xc6\x12\x00\x01", bytes(6), b"\xc6\x12\x00\x02")
    out.append(pad(eth(arp, 0x0806), 60))
    out.append(pad(eth(ipv4(udp(7, 7, b"opt"), 17, opts=b"\x01\x01\x01\x00"), 0x0800), 80))
    # malformed: truncated IPv4 header, bad IHL (3), IHL past the end, truncated TCP, truncated IPv6
    out.append(eth(ipv4(b"", 17)[:12], 0x0800) + bytes(20))
    out.append(pad(eth(ipv4(udp(1, 2, b"x"), 17, ihl=3), 0x0800), 60))
    out.append(eth(ipv4(udp(1, 2, b"x"), 17, ihl=15), 0x0800)[:60])
    out.append(eth(ipv4(tcp(1, 2)[:10], 6), 0x0800))
    out.append(eth(ipv6(b"", 6)[:30], 0x86DD))
    return out


# ---- reading back -------------------------------------------------------------
def read_pcap(path: Path) -> list[tuple[int, int, int, bytes]]:
    """(ts_ns, caplen, wirelen, data) of every record; the file must be ns pcap."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    assert magic == 0xA1B23C4D, f"{path}: not a nanosecond pcap (magic {magic:#x})"
    linktype = struct.unpack_from("<I", data, 20)[0]
    assert linktype == 1
    out, off = [], 24
    while off + 16 <= len(data):
        sec, nsec, caplen, wirelen = struct.unpack_from("<IIII", data, off)
        assert off + 16 + caplen <= len(data), f"{path}: record at {off} cut short"
        out.append((sec * 10**9 + nsec, caplen, wirelen, data[off + 16 : off + 16 + caplen]))
        off += 16 + caplen
    assert off == len(data), f"{path}: {len(data) - off} trailing bytes"
    return out


def packet_files(store: Path, iface: str, queue: int | None = None) -> list[Path]:
    qs = f"q{queue}" if queue is not None else "q*"
    return sorted(store.glob(f"packets/{iface}/{qs}/*.pcap"))


def all_packets(store: Path, iface: str, queue: int | None = None):
    out = []
    for f in packet_files(store, iface, queue):
        out.extend(read_pcap(f))
    return out


@pytest.fixture
def dirs(tmp_path):
    store, status = tmp_path / "store", tmp_path / "run"
    status.mkdir()
    return store, status


# ---- tests ------------------------------------------------------------------
def test_known_frames_arrive_byte_for_byte(lab, dirs):
    store, status = dirs
    frames = known_frames() * 3
    with CaptureProc(lab.iface, store, status) as cap:
        t0, t1 = lab.send_frames(frames, pps=2000)
        sent_ns = lab.last_send_ns
        st = wait_for(lambda: (s := cap.status()) and s["ifaces"][0]["totals"]["packets"] >= len(frames) and s)
    assert cap.returncode == 0, cap.stderr
    got = all_packets(store, lab.iface)
    assert [p[3] for p in got] == frames, "frames differ from what was sent (bytes or order)"
    assert all(c == w == len(f) for (_, c, w, _), f in zip(got, frames))
    # wall-clock timestamps inside the send window, close to the sender's own clock
    ts = [p[0] for p in got]
    assert all(t0 - 1_000_000 <= t <= t1 + 1_000_000 for t in ts)
    lags = sorted(t - s for t, s in zip(ts, sent_ns))
    assert abs(lags[len(lags) // 2]) < 1_000_000, f"median capture-vs-send offset {lags[len(lags) // 2]} ns"
    # counters agree: everything the program saw was redirected and written
    x = st["ifaces"][0]["xdp"]
    q = st["ifaces"][0]["queues"][0]
    assert x["seen_pkts"] == x["redirected"] == len(frames)
    assert x["redirect_fail"] == 0
    # the malformed frames are counted (as the reference parser judges them), and still captured
    from stenoxdp import layout
    from stenoxdp.indexer.parse import parse_frame

    malformed = sum(1 for f in frames if parse_frame(f)["flags"] & layout.F_MALFORMED)
    assert malformed >= 4 * 3
    assert x["parse_err"] == malformed
    assert q["counters"]["packets"] == len(frames)
    assert q["xsk"]["rx_dropped"] == 0 and q["xsk"]["rx_ring_full"] == 0
    # VLAN/QinQ tags that were on the wire are in the files
    assert sum(1 for p in got if p[3][12:14] == b"\x88\xa8") == 10 * 3
    # clean shutdown: no program left, no hidden files left
    assert not xdp_attached(lab.iface)
    assert not list(store.glob("packets/*/*/.*"))


def test_n_queues_n_writers_each_packet_once(lab_factory, dirs):
    lab = lab_factory(queues=2)
    store, status = dirs
    with CaptureProc(lab.iface, store, status) as cap:
        st = cap.status()
        assert len(st["ifaces"][0]["queues"]) == 2
        assert all(q["alive"] for q in st["ifaces"][0]["queues"])
        n = 0
        for cpu in (0, 1, 0, 1):
            lab.send_frames([tagged(n + i, 100) for i in range(250)], pps=5000, cpu=cpu)
            n += 250
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= n)
    assert cap.returncode == 0, cap.stderr
    ids = []
    per_queue = {}
    for q in (0, 1):
        pk = all_packets(store, lab.iface, q)
        per_queue[q] = len(pk)
        ids += [struct.unpack_from(">I", p[3], 42)[0] for p in pk]
        # in order within a queue
        qids = [struct.unpack_from(">I", p[3], 42)[0] for p in pk]
        assert qids == sorted(qids)
    assert sorted(ids) == list(range(n)), "every packet exactly once across the queues"
    assert per_queue[0] > 0 and per_queue[1] > 0, f"traffic did not spread over both queues: {per_queue}"


def test_rotation_by_age_and_by_size(lab, dirs, tmp_path):
    store, status = dirs
    with CaptureProc(lab.iface, store, status, extra=["--rotate-seconds", "1"]) as cap:
        for k in range(3):
            lab.send_frames([tagged(k * 100 + i, 200) for i in range(100)], pps=1000)
            time.sleep(0.6)
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= 300)
    assert cap.returncode == 0
    files = packet_files(store, lab.iface)
    assert len(files) >= 2, "files did not rotate by age"
    assert sum(len(read_pcap(f)) for f in files) == 300

    store2 = tmp_path / "store2"
    with CaptureProc(lab.iface, store2, status, extra=["--rotate-bytes", "65536"]) as cap:
        lab.send_frames([tagged(i, 1000) for i in range(400)], pps=4000)
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= 400)
    assert cap.returncode == 0
    files = packet_files(store2, lab.iface)
    assert len(files) >= 5, f"files did not rotate by size ({len(files)})"
    assert all(f.stat().st_size <= 65536 + 16 + 1000 for f in files), "a file ran past rotate_bytes by more than one record"
    assert sum(len(read_pcap(f)) for f in files) == 400
    # the index records of every finished file are there (or already indexed)
    for f in files:
        assert f.with_suffix(".rec").exists() or (store2 / "index" / lab.iface / f.parent.name / (f.stem + ".idx")).is_dir()


def test_kill9_writer_is_restarted_and_finished_part_kept(lab, dirs):
    store, status = dirs
    with CaptureProc(lab.iface, store, status) as cap:
        lab.send_frames([tagged(i, 300) for i in range(200)], pps=2000)
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= 200)
        time.sleep(1.2)  # past the flush interval: those packets are in the file
        (wpid,) = cap.writer_pids()
        os.kill(wpid, signal.SIGKILL)
        st = wait_for(lambda: (s := cap.status()) and s["ifaces"][0]["queues"][0].get("restarts", 0) >= 1
                      and s["ifaces"][0]["queues"][0]["alive"] and s, timeout=15)
        assert st, "writer was not restarted"
        assert wait_for(lambda: cap.writer_pids() and cap.writer_pids()[0] != wpid)
        time.sleep(0.5)
        lab.send_frames([tagged(1000 + i, 300) for i in range(200)], pps=2000)
        wait_for(lambda: cap.status()["ifaces"][0]["queues"][0]["counters"]["packets"] >= 200)
    assert cap.returncode == 0, cap.stderr
    ids = [struct.unpack_from(">I", p[3], 42)[0] for p in all_packets(store, lab.iface)]
    assert sorted(ids) == list(range(200)) + list(range(1000, 1200))
    assert not list(store.glob("packets/*/*/.*")), "hidden partial files left behind"


def test_idle_link_for_several_rotation_periods(lab, dirs):
    store, status = dirs
    with CaptureProc(lab.iface, store, status, extra=["--rotate-seconds", "1"]) as cap:
        time.sleep(3.5)
        assert cap.proc.poll() is None
        st = cap.status()
        assert all(q["alive"] and q.get("restarts", 0) == 0 for q in st["ifaces"][0]["queues"])
        lab.send_frames([tagged(i, 64) for i in range(10)], pps=1000)
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= 10)
    assert cap.returncode == 0
    assert len(all_packets(store, lab.iface)) == 10


def test_jumbo_frames_are_kept_truncated(lab_factory, dirs):
    lab = lab_factory(mtu=3000)
    store, status = dirs
    big = pad(eth(ipv4(udp(5, 6, b"jumbo"), 17), 0x0800), 2800)
    with CaptureProc(lab.iface, store, status, extra=["--frame-size", "2048"]) as cap:
        lab.send_frames([big, tagged(1, 100)], pps=100)
        st = wait_for(lambda: (s := cap.status()) and s["ifaces"][0]["totals"]["packets"] >= 2 and s)
    assert cap.returncode == 0
    (j, small) = all_packets(store, lab.iface)
    assert j[2] == 2800 and j[1] == 2048 - 256 - 32 and j[3] == big[: j[1]]
    assert small[1] == small[2] == 100
    assert st["ifaces"][0]["xdp"]["oversize"] == 1


def test_non_dedicated_interface_with_address_is_refused(lab, dirs, stenoctl):
    store, status = dirs
    run(["ip", "addr", "add", "198.18.9.1/24", "dev", lab.iface])
    r = subprocess.run([stenoctl, "capture", "--iface", lab.iface, "--dir", str(store), "--status-dir", str(status)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "198.18.9.1/24" in r.stderr and "--dedicated" in r.stderr
    assert "Traceback" not in r.stderr
    assert not xdp_attached(lab.iface)
    # marked dedicated, the same interface is taken
    with CaptureProc(lab.iface, store, status, dedicated=True):
        assert xdp_attached(lab.iface)
    assert not xdp_attached(lab.iface)


def test_missing_interface_is_a_clear_error(dirs, stenoctl):
    store, status = dirs
    r = subprocess.run([stenoctl, "capture", "--iface", "sxdpnosuch0", "--dir", str(store), "--status-dir", str(status)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "sxdpnosuch0" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_restart_loop_guard_stops_capture_cleanly(lab, dirs):
    """A writer that keeps dying is not restarted forever: after more than 5 deaths
    within a minute the controller stops with exit code 4 and a clear message,
    and leaves no program attached."""
    store, status = dirs
    cap = CaptureProc(lab.iface, store, status)
    cap.start()
    try:
        killed = []
        deadline = time.time() + 60
        while cap.proc.poll() is None and time.time() < deadline:
            # kill the writer once it is up again (restarts == deaths so far)
            st = cap.status()
            q = st["ifaces"][0]["queues"][0] if st else {}
            pids = cap.writer_pids()
            if q.get("alive") and q.get("restarts", 0) == len(killed) and len(pids) == 1 and pids[0] not in killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)
        rc = cap.proc.wait(timeout=30)
    finally:
        cap.stop()
    assert rc == 4, cap.stderr
    assert len(killed) == 6
    assert "died 6 times" in cap.stderr and "not restarting" in cap.stderr
    assert "Traceback" not in cap.stderr
    assert not xdp_attached(lab.iface)


def test_sigterm_finalises_and_status_json_while_running(lab, dirs, stenoctl):
    store, status = dirs
    cap = CaptureProc(lab.iface, store, status)
    cap.start()
    try:
        lab.send_frames([tagged(i, 128) for i in range(50)], pps=1000)
        wait_for(lambda: cap.status()["ifaces"][0]["totals"]["packets"] >= 50)
        time.sleep(1.1)
        r = subprocess.run([stenoctl, "status", "--json", "--status-dir", str(status)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        import json

        (doc,) = json.loads(r.stdout)
        ifc = doc["ifaces"][0]
        assert ifc["name"] == lab.iface and ifc["totals"]["packets"] == 50
        assert {"pps", "bps"} <= set(ifc["rates"])
        q = ifc["queues"][0]
        assert q["alive"] and {"rx_dropped", "rx_ring_full", "rx_fill_ring_empty_descs"} <= set(q["xsk"])
        assert ifc["store"]["open_files"] == 1 and ifc["store"]["packet_bytes"] >= 24 + 50 * 144
        r = subprocess.run([stenoctl, "status", "--status-dir", str(status)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and lab.iface in r.stdout and "rx_dropped" in r.stdout
    finally:
        rc = cap.stop(sig=signal.SIGTERM)
    assert rc == 0
    assert len(all_packets(store, lab.iface)) == 50
    assert not list(store.glob("packets/*/*/.*")) and not xdp_attached(lab.iface)
    assert not list(status.glob("*.json")), "status files left after a clean stop"


def test_filter_change_on_a_running_capture_loses_and_duplicates_nothing(lab, dirs, stenoctl):
    """`stenoctl filter set` swaps the program under traffic: 15000 frames alternate
    between UDP ports 1000 and 2000 with increasing ids; before the swap exactly
    the port-1000 frames are captured, after it exactly the port-2000 ones."""
    import threading

    store, status = dirs
    N_SWAP = 15000  # 5 s at 3 kpps: the swap (CLI + compiling the new program) lands mid-stream
    frames = [pad(eth(ipv4(udp(1000 if i % 2 == 0 else 2000, 9, struct.pack(">I", i)), 17), 0x0800), 80)
              for i in range(N_SWAP)]
    with CaptureProc(lab.iface, store, status, extra=["--filter", "udp port 1000"]) as cap:
        sender = threading.Thread(target=lab.send_frames, args=(frames,), kwargs={"pps": 3000})
        sender.start()
        time.sleep(0.7)
        r = subprocess.run([stenoctl, "filter", "set", "--iface", lab.iface, "--status-dir", str(status),
                            "udp port 2000"], capture_output=True, text=True, timeout=60)
        sender.join(timeout=60)
        assert r.returncode == 0, r.stderr
        assert "udp port 2000" in r.stdout
        st = wait_for(lambda: (s := cap.status()) and s["ifaces"][0]["filter_history"] and
                      s["ifaces"][0]["totals"]["packets"] > 0 and s)
        time.sleep(1.0)
        st = cap.status()
        assert all(q["alive"] and q.get("restarts", 0) == 0 for q in st["ifaces"][0]["queues"])
        # a bad filter is refused and the running one stays
        r = subprocess.run([stenoctl, "filter", "set", "--iface", lab.iface, "--status-dir", str(status),
                            "port nosuch"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr
    assert cap.returncode == 0, cap.stderr
    ids = [struct.unpack_from(">I", p[3], 42)[0] for p in all_packets(store, lab.iface)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "a frame was captured twice or out of order"
    before = [i for i in ids if i % 2 == 0]
    after = [i for i in ids if i % 2 == 1]
    assert before and after, "the swap did not happen under traffic"
    hist = st["ifaces"][0]["filter_history"]
    x0, x1 = hist[0]["xdp"], st["ifaces"][0]["xdp"]
    seen = x0["seen_pkts"] + x1["seen_pkts"]
    assert seen == N_SWAP, f"only {seen} of {N_SWAP} frames reached the XDP program (dropped in veth before it)"
    cut = after[0]
    # nothing lost: the swap fell between frames p-1 and p (p = cut or cut-1); the old filter
    # judged every frame before p (all port-1000 ones kept), the new one every frame from p on
    assert before in (list(range(0, cut - 1, 2)), list(range(0, cut, 2)))
    assert after == list(range(cut, N_SWAP, 2))
    # each program counted its own: its filtered + redirected frames add up to every frame
    assert hist[0]["filter"] == "udp port 1000"
    assert x0["redirected"] + x1["redirected"] == len(ids)
    assert x0["redirected"] + x0["filtered"] + x1["redirected"] + x1["filtered"] == N_SWAP

"""Capture filters end to end on real veth pairs.

1. A filter swap under traffic: two instances of the capture program share
   the pinned xsks/clock maps (bpfprog pin_dir); the second replaces the first
   on the interface atomically while numbered frames flow into one AF_XDP
   socket. Every frame the filters keep arrives exactly once (none lost, none
   twice), and each instance's counters say what it counted.
2. `stenoctl capture --dedicated --filter udp` on an interface that has an
   address: pings to that address are still answered (ICMP and ARP go to the
   host stack) while the UDP frames land in the packet files.
"""
from __future__ import annotations

import os
import select
import struct
import subprocess
import threading
import time

import pytest

from stenoxdp.lab import HOST_MAC, PEER_MAC, CaptureProc, mac_bytes

pytestmark = pytest.mark.netns

DST, SRC = mac_bytes(HOST_MAC), mac_bytes(PEER_MAC)
SERVER4, CLIENT4 = "198.18.0.2", "198.18.0.1"


def _frame(proto: int, dport: int, seq: int) -> bytes:
    body = struct.pack(">I", seq) + bytes(18)
    if proto == 17:
        l4 = struct.pack(">HHHH", 40000, dport, 8 + len(body), 0) + body
    else:
        l4 = struct.pack(">HHIIBBHHH", 40000, dport, seq, 0, 0x50, 0x10, 1024, 0, 0) + body
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])) + l4
    return DST + SRC + b"\x08\x00" + ip


class _Reader(threading.Thread):
    """Drain one AF_XDP socket: record the sequence number of every frame."""

    def __init__(self, xsk):
        super().__init__(daemon=True)
        self.xsk, self.seqs, self.stop = xsk, [], threading.Event()

    def run(self):
        x = self.xsk
        p = select.poll()
        p.register(x.fd, select.POLLIN)
        while not self.stop.is_set() or x.rx_available():
            n = x.rx_available()
            if not n:
                p.poll(20)
                continue
            start = int(x.rx.consumer[0])
            for i in range(start, start + n):
                d = x.rx.ring[i & x.rx.mask]
                a, ln = int(d["addr"]), int(d["len"])
                fr = bytes(x.umem_np[a:a + ln])
                self.seqs.append((fr[23], struct.unpack(">I", fr[42:46] if fr[23] == 17 else fr[54:58])[0]))
            x.recycle(start, n)


def test_filter_swap_under_traffic_loses_and_duplicates_nothing(lab):
    from stenoxdp import bpfprog, cbpf
    from stenoxdp.xsk import XskSocket, xskmap_set

    pin = f"/sys/fs/bpf/sxdp_ftest_{os.getpid()}"
    f1 = cbpf.Filter.from_expr("udp or tcp port 7")        # before: UDP and TCP to port 7
    f2 = cbpf.Filter.from_expr("udp and not port 9")       # after: UDP except port 9
    n = 6000
    frames = []
    for i in range(n):
        k = i % 6
        frames.append(_frame(6, 7, i) if k == 4 else _frame(6, 80, i) if k == 5 else
                      _frame(17, 9, i) if k == 3 else _frame(17, 5000, i))
    ifindex = int(open(f"/sys/class/net/{lab.iface}/ifindex").read())
    p1 = p2 = xsk = reader = None
    try:
        p1 = bpfprog.load(filter_c=f1.c_source(), pin_dir=pin)
        p1.sync_clock()
        p1.attach(lab.iface, "native")
        xsk = XskSocket(ifindex, 0)
        xskmap_set(p1.xsks_map_fd, 0, xsk.fd)
        reader = _Reader(xsk)
        reader.start()
        p2 = bpfprog.load(filter_c=f2.c_source(), pin_dir=pin)     # compiled before the traffic starts
        sender = threading.Thread(target=lab.send_frames, args=(frames,), kwargs={"pps": 6000})
        sender.start()
        time.sleep(0.4)
        c1_before_swap = p1.counters()["seen_pkts"]
        p2.attach(lab.iface, "native")                     # atomic replacement
        p1._attached.clear()                               # p1 no longer owns the attachment
        sender.join(timeout=60)
        time.sleep(0.3)
        reader.stop.set()
        reader.join(timeout=10)
        c1, c2 = p1.counters(), p2.counters()
    finally:
        if reader is not None:
            reader.stop.set()
        for p in (p2, p1):
            if p is not None:
                p.close()
        if xsk is not None:
            xsk.close()
        subprocess.run(["rm", "-rf", pin], check=False)

    got = reader.seqs
    seqs = [s for _, s in got]
    assert len(seqs) == len(set(seqs)), "a frame was captured twice"
    # the swap happened mid-stream: both instances saw traffic
    assert 0 < c1_before_swap and c1["seen_pkts"] > 0 and c2["seen_pkts"] > 0
    assert c1["seen_pkts"] + c2["seen_pkts"] == n, (c1, c2)
    # where each frame went follows from which instance saw it
    cut = c1["seen_pkts"]           # frames are sent in order over one queue
    want = set()
    for i in range(n):
        k = i % 6
        if i < cut:
            keep = k in (0, 1, 2, 3, 4)                       # udp or tcp port 7
        else:
            keep = k in (0, 1, 2)                             # udp and not port 9
        if keep:
            want.add(i)
    assert set(seqs) == want, (f"lost {len(want - set(seqs))}, unexpected {len(set(seqs) - want)} "
                               f"(cut at {cut})")
    # counters per instance say what each one filtered and redirected
    assert c1["filtered"] == sum(1 for i in range(cut) if i % 6 == 5)
    assert c2["filtered"] == sum(1 for i in range(cut, n) if i % 6 in (3, 4, 5))
    assert c1["redirected"] + c2["redirected"] == len(want)
    assert c1["redirect_fail"] == c2["redirect_fail"] == 0


def test_filter_udp_on_dedicated_iface_pings_answered_udp_captured(lab, tmp_path):
    from tests.netns.test_capture import all_packets  # the capture tests' pcap reader

    store, status = tmp_path / "store", tmp_path / "run"
    status.mkdir()
    subprocess.run(["ip", "addr", "add", f"{SERVER4}/24", "dev", lab.iface], check=True)
    udp = [_frame(17, 5000, i) for i in range(200)]
    with CaptureProc(lab.iface, store, status, extra=["--filter", "udp"], dedicated=True) as cap:
        ping = lab.exec(["ping", "-c", "5", "-i", "0.2", "-W", "2", SERVER4], check=False, timeout=30)
        lab.send_frames(udp, pps=2000)
        deadline = time.time() + 15
        while time.time() < deadline:
            st = cap.status()
            if st and st["ifaces"][0]["totals"]["packets"] >= len(udp):
                break
            time.sleep(0.1)
        x = cap.status()["ifaces"][0]["xdp"]
    assert cap.returncode == 0, cap.stderr
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    got = [p[3] for p in all_packets(store, lab.iface)]
    assert got == udp, f"{len(got)} frames in the files, {len(udp)} UDP frames sent"
    assert x["filtered"] >= 5 and x["redirected"] == len(udp), x

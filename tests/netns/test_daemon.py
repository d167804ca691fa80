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

from stenoxdp.lab import HOST_MAC, PEER_MAC, CaptureProc, mac_bytes, run

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
    """(ts_ns, frame) per record of a nanosecond pcap; complete_only: stop at a cut-short tail."""
    if len(data) < 24:
        assert complete_only, "pcap shorter than its global header"
        return []
    assert struct.unpack_from("<I", data)[0] == 0xA1B23C4D, "not a nanosecond pcap"
    out, off = [], 24
    while off + 16 <= len(data):
        sec, nsec, caplen, _wire = struct.unpack_from("<IIII", data, off)
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


def on_disk(store: Path) -> set[tuple[int, int]]:
    """Markers of every complete record in every packet file (open or closed) of a store right now."""
    seen = set()
    for f in store.glob("packets/*/q*/*.pcap"):
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            continue  # renamed at rotation meanwhile; its new name is globbed too (or next time)
        seen.update(markers(parse_pcap(data, complete_only=True)))
    for f in store.glob("packets/*/q*/.*.pcap"):
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            continue
        seen.update(markers(parse_pcap(data, complete_only=True)))
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


def xdp_attached(iface: str) -> bool:
    return "prog/xdp" in run(["ip", "-d", "link", "show", iface], check=False).stdout


def wait_for(pred, timeout: float = 10.0, step: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


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
    for what, ifaces, server, needle in cases:
        cfg = write_config(tmp / "bad.toml", status, ifaces, server)
        r = _bad_run(cfg)
        assert r.returncode != 0, f"{what}: accepted"
        assert needle in r.stderr, f"{what}: message does not name {needle!r}: {r.stderr!r}"
        assert "Traceback" not in r.stderr, f"{what}: traceback"
        assert len(r.stderr.strip().splitlines()) <= 3, f"{what}: more than a short message: {r.stderr!r}"
        assert not xdp_attached(lab.iface), f"{what}: XDP program left attached"
        left = [p for p in (tmp / "s", tmp / "t") if p.exists() and any(p.rglob("*.pcap"))]
        assert not left, f"{what}: packet files created: {left}"
        assert not [p for p in status.glob("*.json")], f"{what}: a status file was published"

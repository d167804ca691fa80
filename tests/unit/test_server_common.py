"""Shared fixtures for the query-server tests (real TLS on loopback, a real store
filled by the importer, the real query engine). No tests here."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

TS0 = 1_750_000_000 * 10**9  # 2025-06-15, ns
A, B, C = "198.18.0.1", "198.18.0.2", "198.18.0.3"
N_UDP, N_TCP, N_ARP = 300, 500, 20


def _ip(s: str) -> bytes:
    return socket.inet_aton(s)


def _frame(src: str, dst: str, proto: int, sport: int, dport: int, payload: bytes) -> bytes:
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    l4 = (struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) if proto == 17 else
          struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 8192, 0, 0))
    tot = 20 + len(l4) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 1, 0x4000, 64, proto, 0, _ip(src), _ip(dst))
    return eth + ip + l4 + payload


def _arp() -> bytes:
    eth = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06"
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02\x00\x00\x00\x00\x01", _ip(A), b"\x00" * 6, _ip(B))


def make_pcap(path: Path) -> None:
    """A ns pcap: A<->B UDP/53, A<->C TCP/80 (bigger packets), some ARP, interleaved."""
    recs = []
    t = TS0
    for i in range(max(N_UDP, N_TCP, N_ARP)):
        if i < N_UDP:
            recs.append((t, _frame(A, B, 17, 40000 + i % 7, 53, bytes([i % 251]) * (40 + i % 60))))
            t += 1_000_000
        if i < N_TCP:
            s, d = (A, C) if i % 2 else (C, A)
            recs.append((t, _frame(s, d, 6, 80 if s == C else 51000, 80 if d == C else 51000,
                               bytes([i % 13]) * (200 + (i * 37) % 1200))))
            t += 1_000_000
        if i < N_ARP:
            recs.append((t, _arp()))
            t += 1_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        for ts, data in recs:
            f.write(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(data), len(data)))
            f.write(data)


def read_pcap(data: bytes) -> list[tuple[int, bytes]]:
    """(timestamp in µs, packet bytes) for every record of a pcap (µs or ns)."""
    magic = struct.unpack_from("<I", data)[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), hex(magic)
    nano = magic == 0xA1B23C4D
    out, off = [], 24
    while off < len(data):
        s, frac, incl, _ = struct.unpack_from("<IIII", data, off)
        off += 16
        us = s * 10**6 + (frac // 1000 if nano else frac)
        out.append((us, data[off:off + incl]))
        off += incl
    assert off == len(data), "pcap ends inside a record"
    return out


@pytest.fixture(scope="session")
def server_store(tmp_path_factory):
    from stenoxdp.indexer.importer import import_file
    from stenoxdp.store import Store

    root = tmp_path_factory.mktemp("srvstore")
    pcap = root / "in.pcap"
    make_pcap(pcap)
    st = Store(root / "store").init()
    import_file(st, pcap)
    return st


@pytest.fixture(scope="session")
def certdir(tmp_path_factory):
    from stenoxdp.server import certs

    d = tmp_path_factory.mktemp("srvcerts")
    certs.init(d, "127.0.0.1")
    certs.issue(d, "alice")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    certs.issue(d, "expired", not_before=past, not_after=past + dt.timedelta(days=1))
    other = tmp_path_factory.mktemp("othercerts")
    certs.init(other, "127.0.0.1")
    return d, other


def local_answer(store, text: str, **kw) -> bytes:
    from stenoxdp.indexer.engine import query

    return b"".join(query([store], text, **kw))


def start_server(store, cdir, tmp_path=None, **limits):
    from stenoxdp.server.daemon import serve

    return serve([store], cdir, host="127.0.0.1", port=0, grpc_port=0, audit_stderr=False,
                 audit_file=(tmp_path / "audit.log") if tmp_path else None, **limits)


def steno_config(tmp_path: Path, port: int, certs_dir: Path) -> dict:
    """A Stenographer-style client config and the env that makes stenoread/stenocurl use it."""
    cfg = tmp_path / "steno-config.json"
    cfg.write_text(json.dumps({"Host": "127.0.0.1", "Port": port, "CertPath": str(certs_dir)}))
    env = dict(os.environ, STENOGRAPHER_CONFIG=str(cfg))
    return env


def client_dir(tmp_path: Path, certs_dir: Path, name: str, ca_from: Path | None = None) -> Path:
    """A CertPath for stenocurl with NAME's cert/key as client_cert.pem/client_key.pem."""
    d = tmp_path / f"cp-{name}"
    d.mkdir(exist_ok=True)
    shutil.copy(Path(ca_from or certs_dir) / "ca_cert.pem", d / "ca_cert.pem")
    shutil.copy(Path(certs_dir) / f"{name}_cert.pem", d / "client_cert.pem")
    shutil.copy(Path(certs_dir) / f"{name}_key.pem", d / "client_key.pem")
    return d


def curl(url: str, *args: str, cert_dir: Path | None = None, ca: Path | None = None, timeout: float = 30):
    cmd = ["curl", "--silent", "--show-error", "--max-time", str(int(timeout))]
    if cert_dir is not None:
        cmd += ["--cert", str(cert_dir / "client_cert.pem"), "--key", str(cert_dir / "client_key.pem")]
    if ca is not None:
        cmd += ["--cacert", str(ca)]
    return subprocess.run(cmd + list(args) + [url], capture_output=True, timeout=timeout + 10)

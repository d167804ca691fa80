"""Stenographer's HTTPS API over mutual TLS: Debian's unmodified stenoread and
stenocurl, refusals, 400 with the parser's message, limits, debug pages."""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from stenoxdp.errors import QueryError
from stenoxdp.server import certs

from .test_server_common import (A, B, C, N_TCP, N_UDP, certdir, client_dir, curl, local_answer,  # noqa: F401
                                 read_pcap, server_store, start_server, steno_config)

pytestmark = pytest.mark.skipif(not (shutil.which("stenoread") and shutil.which("stenocurl") and shutil.which("jq")),
                                reason="Debian's stenographer-client and jq are needed (run `make setup`)")


@pytest.fixture(scope="module")
def srv(server_store, certdir, tmp_path_factory):
    h = start_server(server_store, certdir[0], tmp_path_factory.mktemp("httpsaudit"))
    yield h
    h.stop()


def _url(h, path="/query"):
    return f"https://127.0.0.1:{h.port}{path}"


def test_stenoread_same_packets(srv, server_store, certdir, tmp_path):
    env = steno_config(tmp_path, srv.port, certdir[0])
    out = tmp_path / "out.pcap"
    r = subprocess.run(["stenoread", f"host {C}", "-w", str(out)], env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    want = read_pcap(local_answer(server_store, f"host {C}"))
    assert read_pcap(out.read_bytes()) == want and len(want) == N_TCP
    # with tcpdump arguments and stenoread's own limit flag
    r = subprocess.run(["stenoread", "--limit-packets", "5", f"host {B}", "-n"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == 5 and all(f"{A}." in x and f"{B}.53" in x for x in lines)


def test_stenocurl_query_and_debug(srv, server_store, certdir, tmp_path):
    env = steno_config(tmp_path, srv.port, certdir[0])
    hdr = tmp_path / "headers"
    r = subprocess.run(["stenocurl", "/query", "-d", f"host {B}", "--silent", "--show-error", "-D", str(hdr)],
                       env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head = hdr.read_bytes()
    assert b"200" in head.split(b"\r\n")[0] and b"application/octet-stream" in head
    assert b"chunked" in head.lower() and b"Steno-Packets: %d" % N_UDP in head  # trailer
    assert r.stdout == local_answer(server_store, f"host {B}")
    r = subprocess.run(["stenocurl", "/debug/stats", "--silent"], env=env, capture_output=True, text=True, timeout=30)
    stats = dict(line.split("\t") for line in r.stdout.splitlines())
    assert int(stats["queries"]) >= 1 and "bytes_sent" in stats
    r = subprocess.run(["stenocurl", "/debug/config", "--silent"], env=env, capture_output=True, text=True, timeout=30)
    cfg = json.loads(r.stdout)
    assert cfg["Port"] == srv.port and cfg["GrpcPort"] == srv.grpc_port and "ca_key" not in r.stdout


def test_limit_headers(srv, server_store, certdir):
    cp = certdir[0]
    r = curl(_url(srv), "-d", f"host {C}", "-H", "Steno-Limit-Bytes: 3000", cert_dir=cp, ca=cp / "ca_cert.pem")
    assert r.returncode == 0, r.stderr
    assert r.stdout == local_answer(server_store, f"host {C}", limit_bytes=3000)
    r = curl(_url(srv), "-d", f"host {C}", "-H", "Steno-Limit-Packets: 4", cert_dir=cp, ca=cp / "ca_cert.pem")
    assert len(read_pcap(r.stdout)) == 4
    r = curl(_url(srv), "-d", f"host {C}", "-H", "Steno-Limit-Packets: lots", "-w", "%{http_code}",
             cert_dir=cp, ca=cp / "ca_cert.pem")
    assert r.stdout.endswith(b"400") and b"Steno-Limit-Packets" in r.stdout


def test_bad_query_400_with_message(srv, server_store, certdir):
    cp = certdir[0]
    with pytest.raises(QueryError) as local:
        local_answer(server_store, "host 198.18.0.999 and")
    r = curl(_url(srv), "-d", "host 198.18.0.999 and", "-i", cert_dir=cp, ca=cp / "ca_cert.pem")
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"text/plain" in head
    assert str(local.value) in body.decode()


def test_refusals(srv, certdir, tmp_path):
    cdir, other = certdir
    ca = cdir / "ca_cert.pem"
    cases = {
        "no client certificate": dict(cert_dir=None),
        "other CA": dict(cert_dir=client_dir(tmp_path, other, "client")),
        "expired": dict(cert_dir=client_dir(tmp_path, cdir, "expired")),
        "server certificate (no clientAuth usage)": dict(cert_dir=client_dir(tmp_path, cdir, "server")),
    }
    for what, kw in cases.items():
        r = curl(_url(srv), "-d", f"host {B}", "-o", str(tmp_path / "x"), ca=ca, **kw)
        assert r.returncode != 0, what  # TLS alert: curl (56)/(35)
        assert not (tmp_path / "x").exists() or (tmp_path / "x").stat().st_size == 0, what
    # the same refusals through stenoread: no packets, an error on stderr
    env = steno_config(tmp_path, srv.port, client_dir(tmp_path, other, "client", ca_from=cdir))
    r = subprocess.run(["stenoread", f"host {B}", "-w", str(tmp_path / "y.pcap")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert "curl:" in r.stderr and not (tmp_path / "y.pcap").exists()


def test_revoked_without_restart(srv, certdir, tmp_path):
    cdir = certdir[0]
    certs.issue(cdir, "carol")
    cp = client_dir(tmp_path, cdir, "carol")
    r = curl(_url(srv), "-d", f"host {B}", cert_dir=cp, ca=cp / "ca_cert.pem")
    assert r.returncode == 0 and len(r.stdout) > 24
    certs.revoke(cdir, "carol")
    deadline = time.monotonic() + 5
    while True:
        r = curl(_url(srv), "-d", f"host {B}", "-w", "\n%{http_code}", cert_dir=cp, ca=cp / "ca_cert.pem")
        if r.stdout.endswith(b"403"):
            assert b"revoked" in r.stdout
            break
        assert time.monotonic() < deadline, "revoked certificate still accepted after 5 s"
        time.sleep(0.2)
    r = curl(_url(srv, "/debug/stats"), "-w", "\n%{http_code}", cert_dir=cp, ca=cp / "ca_cert.pem")
    assert r.stdout.endswith(b"403")
    audit = (srv.service.audit.path).read_text()
    assert "refused" in audit and "CN=carol" in audit


def test_limits_503_and_too_large(server_store, certdir, tmp_path):
    from stenoxdp.server.core import Client

    cdir = certdir[0]
    ca = cdir / "ca_cert.pem"
    h = start_server(server_store, cdir, tmp_path, max_concurrent=1, max_answer_bytes=20_000, slot_wait=0)
    try:
        held = h.service.start(f"host {B}", Client("test"))
        r = curl(_url(h), "-d", f"host {B}", "-i", cert_dir=cdir, ca=ca)
        assert r.stdout.startswith(b"HTTP/1.1 503") and b"server busy" in r.stdout
        held.close()
        r = curl(_url(h), "-d", f"host {C}", "-o", str(tmp_path / "big"), cert_dir=cdir, ca=ca)
        # never a silent cut: the chunked body has no end, curl fails (18)
        assert r.returncode == 18, (r.returncode, r.stderr)
        assert (tmp_path / "big").stat().st_size >= 20_000
        env = steno_config(tmp_path, h.port, cdir)
        r = subprocess.run(["stenoread", f"host {C}", "-w", str(tmp_path / "z.pcap")], env=env,
                           capture_output=True, text=True, timeout=60)
        assert "(18) transfer closed" in r.stderr  # curl and tcpdump share stderr
        # asked-for limits below the cap are fine
        r = curl(_url(h), "-d", f"host {C}", "-H", "Steno-Limit-Bytes: 5000", cert_dir=cdir, ca=ca)
        assert r.returncode == 0 and len(r.stdout) >= 5000
    finally:
        h.stop()
    audit = (tmp_path / "audit.log").read_text()
    assert "busy:" in audit and "too_large:" in audit


def test_methods_and_paths(srv, certdir):
    cdir = certdir[0]
    ca = cdir / "ca_cert.pem"
    r = curl(_url(srv), "-w", "%{http_code}", cert_dir=cdir, ca=ca)  # GET /query
    assert r.stdout.endswith(b"405")
    r = curl(_url(srv, "/nope"), "-w", "%{http_code}", cert_dir=cdir, ca=ca)
    assert r.stdout.endswith(b"404")


def test_stalled_client_does_not_stall_others(server_store, certdir, tmp_path):
    """A client that sends a query and never reads holds only its own slot."""
    cdir = certdir[0]
    h = start_server(server_store, cdir, tmp_path, max_concurrent=4, queue_chunks=2, coalesce_bytes=4096)
    ctx = ssl.create_default_context(cafile=str(cdir / "ca_cert.pem"))
    ctx.load_cert_chain(str(cdir / "client_cert.pem"), str(cdir / "client_key.pem"))
    stalled = []
    try:
        for _ in range(2):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", h.port), timeout=10), server_hostname="127.0.0.1")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = f"host {C}".encode()
            s.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            stalled.append(s)
        want = local_answer(server_store, f"host {B}")
        for _ in range(3):
            r = curl(_url(h), "-d", f"host {B}", cert_dir=cdir, ca=cdir / "ca_cert.pem")
            assert r.returncode == 0 and r.stdout == want
    finally:
        for s in stalled:
            s.close()
        h.stop()


def test_stalled_client_dropped_after_send_timeout(certdir, tmp_path):
    """A reader that stops reading a big answer is dropped after send_timeout and its slot
    comes back (audit says why); a fresh query then runs."""
    import struct

    from stenoxdp.indexer.importer import import_file
    from stenoxdp.store import Store

    from .test_server_common import TS0, _frame

    fr = _frame(A, C, 17, 1000, 2000, b"z" * 1400)
    pcap = tmp_path / "big.pcap"
    with open(pcap, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        f.write(b"".join(struct.pack("<IIII", (TS0 // 10**9) + i // 1000, (i % 1000) * 10**6, len(fr), len(fr)) + fr
                         for i in range(12000)))  # ~17 MB: more than the socket buffers hold
    st = Store(tmp_path / "store").init()
    import_file(st, pcap)
    cdir = certdir[0]
    h = start_server(st, cdir, tmp_path, max_concurrent=1, send_timeout=1.0, slot_wait=0)
    ctx = ssl.create_default_context(cafile=str(cdir / "ca_cert.pem"))
    ctx.load_cert_chain(str(cdir / "client_cert.pem"), str(cdir / "client_key.pem"))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", h.port))
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        body = f"host {C}".encode()
        s.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        s.recv(100)  # the answer has started; now stall
        deadline = time.monotonic() + 20
        while h.service.counters.snapshot()["queries_active"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert h.service.counters.snapshot()["queries_active"] == 0
        r = curl(_url(h), "-d", f"host {C}", "-H", "Steno-Limit-Packets: 3", cert_dir=cdir, ca=cdir / "ca_cert.pem")
        assert r.returncode == 0 and len(read_pcap(r.stdout)) == 3
    finally:
        s.close()
        h.stop()
    assert "client accepted no data for 1 s" in (tmp_path / "audit.log").read_text()

"""gRPC over mutual TLS on loopback against a real store: refusals, same bytes
as the local engine, Stenographer's own client, status codes, limits."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from stenoxdp.errors import QueryError
from stenoxdp.proto import load
from stenoxdp.server import certs
from stenoxdp.server.client import RemoteError, remote_query, remote_status

from .test_server_common import A, B, C, N_TCP, N_UDP, certdir, local_answer, read_pcap, server_store, start_server  # noqa: F401

pb = load()


@pytest.fixture(scope="module")
def srv(server_store, certdir, tmp_path_factory):
    h = start_server(server_store, certdir[0], tmp_path_factory.mktemp("grpcaudit"))
    yield h
    h.stop()


def _channel(port, cdir, name="client", ca_dir=None, with_cert=True):
    ca = (ca_dir or cdir) / "ca_cert.pem"
    if with_cert:
        creds = grpc.ssl_channel_credentials(ca.read_bytes(), (cdir / f"{name}_key.pem").read_bytes(),
                                             (cdir / f"{name}_cert.pem").read_bytes())
    else:
        creds = grpc.ssl_channel_credentials(ca.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _retrieve(chan, query, **kw):
    stub = pb.steno_pb2_grpc.StenographerStub(chan)
    return b"".join(r.pcap for r in stub.RetrievePcap(pb.steno_pb2.PcapRequest(query=query, **kw), timeout=20))


def test_same_bytes_as_local(srv, server_store, certdir):
    for q in (f"host {B}", f"host {C}"):
        want = local_answer(server_store, q)
        got = b"".join(remote_query(f"127.0.0.1:{srv.grpc_port}", certdir[0], q, timeout=20))
        assert got == want
        assert len(read_pcap(got)) == (N_UDP if q.endswith(B) else N_TCP)
    with _channel(srv.grpc_port, certdir[0]) as ch:
        assert _retrieve(ch, f"host {B}", chunk_size=4096) == local_answer(server_store, f"host {B}")


def test_summary_and_limits(srv, server_store, certdir):
    a = remote_query(f"127.0.0.1:{srv.grpc_port}", certdir[0], f"host {C}", limit_packets=7, timeout=20)
    data = b"".join(a)
    assert len(read_pcap(data)) == 7 and a.packets == 7 and a.truncated
    assert data == local_answer(server_store, f"host {C}", limit_packets=7)


def test_retrieve_chunks_and_max_size(srv, server_store, certdir):
    with _channel(srv.grpc_port, certdir[0]) as ch:
        stub = pb.steno_pb2_grpc.StenographerStub(ch)
        rs = list(stub.RetrievePcap(pb.steno_pb2.PcapRequest(uid="u1", query=f"host {C}", chunk_size=2048), timeout=20))
        assert len(rs) > 10 and all(r.uid == "u1" and 0 < len(r.pcap) <= 2048 for r in rs)
        cut = _retrieve(ch, f"host {C}", max_size=10_000)
        assert cut == local_answer(server_store, f"host {C}", limit_bytes=10_000)
        assert 10_000 <= len(cut) < 10_000 + 1600


def test_bad_query_invalid_argument(srv, server_store, certdir):
    with pytest.raises(QueryError) as local:
        local_answer(server_store, "host 198.18.0.999 and")
    with _channel(srv.grpc_port, certdir[0]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            _retrieve(ch, "host 198.18.0.999 and")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(local.value) in e.value.details()
    with pytest.raises(QueryError, match="empty query"):
        list(remote_query(f"127.0.0.1:{srv.grpc_port}", certdir[0], "  ", timeout=20))


def test_refusals(srv, certdir, tmp_path):
    cdir, other = certdir
    port = srv.grpc_port
    cases = [("no client certificate", _channel(port, cdir, with_cert=False)),
             ("other CA", _channel(port, other, ca_dir=cdir)),
             ("expired", _channel(port, cdir, "expired")),
             ("server certificate (no clientAuth usage)", _channel(port, cdir, "server"))]
    for what, ch in cases:
        with ch:
            with pytest.raises(grpc.RpcError) as e:
                _retrieve(ch, f"host {B}")
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, what


def test_revoked_without_restart(srv, certdir, tmp_path):
    cdir = certdir[0]
    certs.issue(cdir, "bob")
    with _channel(srv.grpc_port, cdir, "bob") as ch:
        assert len(_retrieve(ch, f"host {B}")) > 24
    certs.revoke(cdir, "bob")
    deadline = time.monotonic() + 5
    while True:
        with _channel(srv.grpc_port, cdir, "bob") as ch:
            try:
                _retrieve(ch, f"host {B}")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "revoked" in e.details()
                break
        assert time.monotonic() < deadline, "revoked certificate still accepted after 5 s"
        time.sleep(0.2)
    with pytest.raises(RemoteError, match="revoked"):
        list(remote_query(f"127.0.0.1:{srv.grpc_port}", cdir, f"host {B}", name="bob", timeout=20))
    # others still get in
    assert len(b"".join(remote_query(f"127.0.0.1:{srv.grpc_port}", cdir, f"host {B}", timeout=20))) > 24


def test_status_coverage_filter(srv, certdir):
    st = remote_status(f"127.0.0.1:{srv.grpc_port}", certdir[0])
    assert int(st["status"]["counters"]["queries"]) >= 1
    assert st["coverage"] and int(st["coverage"][0]["packets"]) > 0
    assert st["filters"] == []


def test_busy_too_large_timeout(server_store, certdir, tmp_path):
    from stenoxdp.server.core import Client

    cdir = certdir[0]
    h = start_server(server_store, cdir, tmp_path, max_concurrent=1, max_answer_bytes=20_000, slot_wait=0)
    try:
        srv = f"127.0.0.1:{h.grpc_port}"
        held = h.service.start(f"host {B}", Client("test"))  # takes the only slot
        with pytest.raises(RemoteError, match="server busy"):
            list(remote_query(srv, cdir, f"host {B}", timeout=20))
        held.close()
        # answer over the server cap: data first, then RESOURCE_EXHAUSTED (not a silent cut)
        got = []
        with _channel(h.grpc_port, cdir) as ch:
            stub = pb.steno_pb2_grpc.StenographerStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                for r in stub.RetrievePcap(pb.steno_pb2.PcapRequest(query=f"host {C}"), timeout=20):
                    got.append(r.pcap)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "20000 bytes" in e.value.details()
        assert len(b"".join(got)) >= 20_000
        # asking for less than the cap is the client's own limit: no error
        a = remote_query(srv, cdir, f"host {C}", limit_bytes=5_000, timeout=20)
        assert len(b"".join(a)) >= 5_000 and a.truncated
    finally:
        h.stop()
    h = start_server(server_store, cdir, tmp_path, max_seconds=1e-9)
    try:
        with pytest.raises(RemoteError, match="took too long.*limit"):
            list(remote_query(f"127.0.0.1:{h.grpc_port}", cdir, f"host {C}", timeout=20))
    finally:
        h.stop()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    outcomes = " ".join(lines)
    assert "outcome=\"busy:" in outcomes and "too_large:" in outcomes and "timeout:" in outcomes


STENOGRAPHER_PROTO = """
syntax = "proto3";
package steno;
service Stenographer {
  rpc RetrievePcap(PcapRequest) returns (stream PcapResponse) {}
}
message PcapRequest {
  string uid = 1;
  int64 chunk_size = 2;
  int64 max_size = 3;
  string query = 4;
}
message PcapResponse {
  string uid = 1;
  bytes pcap = 2;
}
"""


def test_client_from_stenographers_proto(srv, server_store, certdir, tmp_path):
    """A client generated from Stenographer's steno.proto (its service definition, not ours),
    in its own process, gets the same pcap."""
    (tmp_path / "steno.proto").write_text(STENOGRAPHER_PROTO)
    from grpc_tools import protoc

    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        str(tmp_path / "steno.proto")]) == 0
    cdir = certdir[0]
    script = textwrap.dedent(f"""
        import sys, grpc
        sys.path.insert(0, {str(tmp_path)!r})
        import steno_pb2, steno_pb2_grpc
        d = {str(cdir)!r}
        creds = grpc.ssl_channel_credentials(open(d + "/ca_cert.pem", "rb").read(),
                                             open(d + "/client_key.pem", "rb").read(),
                                             open(d + "/client_cert.pem", "rb").read())
        ch = grpc.secure_channel("127.0.0.1:{srv.grpc_port}", creds)
        stub = steno_pb2_grpc.StenographerStub(ch)
        out = b"".join(r.pcap for r in stub.RetrievePcap(steno_pb2.PcapRequest(query="host {C}", chunk_size=65536)))
        open({str(tmp_path / 'out.pcap')!r}, "wb").write(out)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.pcap").read_bytes() == local_answer(server_store, f"host {C}")


def test_time_bounds(srv, server_store, certdir):
    from .test_server_common import TS0

    lo, hi = TS0 + 100_000_000, TS0 + 200_500_000  # 0.1 s .. 0.2005 s into the capture
    a = remote_query(f"127.0.0.1:{srv.grpc_port}", certdir[0], f"host {C}", after_ns=lo, before_ns=hi, timeout=20)
    got = read_pcap(b"".join(a))
    want = [p for p in read_pcap(local_answer(server_store, f"host {C}")) if lo // 1000 <= p[0] < hi // 1000]
    assert got == want and 0 < len(got) < N_TCP and a.packets == len(got)
    # bounds alone (empty query text) are a valid query
    a = remote_query(f"127.0.0.1:{srv.grpc_port}", certdir[0], "", after_ns=lo, before_ns=hi, timeout=20)
    assert len(read_pcap(b"".join(a))) > len(got)
    with pytest.raises(QueryError, match="before_ns must be later"):
        list(remote_query(f"127.0.0.1:{srv.grpc_port}", certdir[0], f"host {C}", after_ns=hi, before_ns=lo,
                          timeout=20))


def test_capture_filter_from_status_files(server_store, certdir, tmp_path):
    """CaptureFilter reports what the capture daemon publishes in <status_dir>/<pid>.json."""
    import json

    from stenoxdp.server.daemon import serve

    sd = tmp_path / "status"
    sd.mkdir()
    (sd / "4242.json").write_text(json.dumps({"pid": 4242, "ifaces": [{"name": "sxdp0", "filter": "not port 22"},
                                                                      {"name": "sxdp1", "filter": None}]}))
    (sd / "4242-sxdp0-q0.json").write_text("{}")  # per-queue files are not daemon status
    h = serve([server_store], certdir[0], grpc_port=0, audit_stderr=False, status_dir=sd)
    try:
        st = remote_status(f"127.0.0.1:{h.grpc_port}", certdir[0])
    finally:
        h.stop()
    got = {f["iface"]: f.get("expression", "") for f in st["filters"]}
    assert got == {"sxdp0": "not port 22", "sxdp1": ""}


def test_iface_and_micros(srv, server_store, certdir):
    addr = f"127.0.0.1:{srv.grpc_port}"
    got = b"".join(remote_query(addr, certdir[0], f"host {B}", iface="import", micros=True, timeout=20))
    assert got == local_answer(server_store, f"host {B}", iface="import", micros=True)
    assert got[:4] == b"\xd4\xc3\xb2\xa1" and len(read_pcap(got)) == N_UDP
    assert len(b"".join(remote_query(addr, certdir[0], f"host {B}", iface="other0", timeout=20))) == 24


def test_engine_warnings_reach_the_client(certdir, tmp_path):
    """A packet file whose index is gone is scanned; the engine's warning reaches the remote client."""
    import shutil

    from stenoxdp.indexer.importer import import_file
    from stenoxdp.store import Store

    from .test_server_common import make_pcap

    make_pcap(tmp_path / "in.pcap")
    st = Store(tmp_path / "store").init()
    import_file(st, tmp_path / "in.pcap")
    want = local_answer(st, f"host {B}")
    for f in st.files():
        shutil.rmtree(f.idx)
    h = start_server(st, certdir[0], tmp_path)
    try:
        a = remote_query(f"127.0.0.1:{h.grpc_port}", certdir[0], f"host {B}", timeout=20)
        assert b"".join(a) == want
        assert a.warnings and any("index" in w for w in a.warnings)
    finally:
        h.stop()
    assert "warnings=" in (tmp_path / "audit.log").read_text()

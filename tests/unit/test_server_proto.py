"""Generated stubs: current with the .proto files, importable as a package, and
Stenographer's messages byte-for-byte on the wire."""
from __future__ import annotations

import struct

from stenoxdp import proto


def test_stubs_current(tmp_path):
    pb = proto.load()
    assert proto.up_to_date()
    proto.build(tmp_path)
    for name in ("steno_pb2.py", "steno_pb2_grpc.py", "stenoxdp_pb2.py", "stenoxdp_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (proto.HERE / name).read_text(), name
    assert "from . import steno_pb2" in (tmp_path / "steno_pb2_grpc.py").read_text()
    assert pb.steno_pb2.DESCRIPTOR.package == "steno"
    assert pb.stenoxdp_pb2.DESCRIPTOR.package == "stenoxdp.v1"


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def test_stenographer_wire_format():
    pb = proto.load()
    req = pb.steno_pb2.PcapRequest(uid="abc", chunk_size=1 << 20, max_size=5, query="host 1.2.3.4")
    want = (b"\x0a\x03abc" + b"\x10" + _varint(1 << 20) + b"\x18\x05" + b"\x22" + _varint(12) + b"host 1.2.3.4")
    assert req.SerializeToString() == want
    rsp = pb.steno_pb2.PcapResponse.FromString(b"\x0a\x01u\x12\x04" + struct.pack("<I", 0xA1B2C3D4))
    assert rsp.uid == "u" and rsp.pcap == b"\xd4\xc3\xb2\xa1"
    svc = pb.steno_pb2.DESCRIPTOR.services_by_name["Stenographer"]
    m = svc.methods_by_name["RetrievePcap"]
    assert m.full_name == "steno.Stenographer.RetrievePcap" and m.server_streaming and not m.client_streaming


def test_our_api_shape():
    pb = proto.load()
    svc = pb.stenoxdp_pb2.DESCRIPTOR.services_by_name["StenoXdp"]
    assert set(svc.methods_by_name) == {"Query", "Status", "Coverage", "CaptureFilter"}
    fields = set(pb.stenoxdp_pb2.QueryRequest.DESCRIPTOR.fields_by_name)
    assert {"query", "limit_packets", "limit_bytes", "micros", "iface", "after_ns", "before_ns"} <= fields

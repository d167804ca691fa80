"""Client side of our gRPC API over mutual TLS.

    from stenoxdp.server.client import remote_query
    ans = remote_query("198.18.0.1:1235", "/etc/stenoxdp/certs", "host 198.18.0.2")
    for chunk in ans: out.write(chunk)        # one pcap file, header first
    ans.packets, ans.bytes, ans.truncated      # from the server's summary, after the loop
    ans.warnings                               # the server engine's warnings (skipped/scanned files)

certs_dir holds ca_cert.pem and NAME_cert.pem / NAME_key.pem (name="client"
by default: client_cert.pem / client_key.pem). Failures raise StenoError
subclasses with one clear line (QueryError for a bad query).
"""
from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core's per-handshake INFO lines are noise here
import grpc  # noqa: E402

from stenoxdp.errors import QueryError, StenoError

from . import certs


class RemoteError(StenoError):
    pass


def _explain(e: grpc.RpcError, server: str) -> StenoError:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else "") or str(e)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return QueryError(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if "handshake" in low or "ssl" in low or "certificate" in low or "tls" in low:
            return RemoteError(f"TLS with {server} failed ({details}): check that the certificates are from the "
                               f"server's CA, not expired, and that the server's certificate names this host")
        return RemoteError(f"cannot reach {server}: {details} (is `stenoctl serve --grpc-port` running there?)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return RemoteError(f"{server} refused the client certificate: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RemoteError(f"{server}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RemoteError(f"{server}: query took too long: {details}")
    return RemoteError(f"{server}: {code.name if code else 'error'}: {details}")


def channel(server: str, certs_dir, name: str = "client", server_name: str | None = None) -> grpc.Channel:
    if ":" not in server:
        raise StenoError(f"--server {server!r} must be HOST:PORT (the server's --grpc-port)")
    ca, cert, key = certs.client_files(certs_dir, name)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    opts = [("grpc.max_receive_message_length", 8 << 20)]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(server, creds, options=opts)


class RemoteAnswer:
    def __init__(self, server: str, chan: grpc.Channel, call):
        self.server, self._chan, self._call = server, chan, call
        self.packets = self.bytes = 0
        self.truncated = False
        self.seconds = 0.0
        self.warnings: list[str] = []  # the server engine's warnings (from the summary)

    def __iter__(self):
        try:
            for r in self._call:
                kind = r.WhichOneof("body")
                if kind == "pcap":
                    yield r.pcap
                elif kind == "summary":
                    s = r.summary
                    self.packets, self.bytes, self.truncated, self.seconds = s.packets, s.bytes, s.truncated, s.seconds
                    self.warnings = list(s.warnings)
        except grpc.RpcError as e:
            raise _explain(e, self.server) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._chan is not None:
            self._chan.close()
            self._chan = None


def remote_query(server: str, certs_dir, text: str, limit_packets: int = 0, limit_bytes: int = 0, *,
                 micros: bool = False, iface: str | None = None, after_ns: int = 0, before_ns: int = 0,
                 name: str = "client", timeout: float | None = None, server_name: str | None = None) -> RemoteAnswer:
    """Run a query on a remote stenoxdp server; iterate the result for pcap bytes."""
    from stenoxdp.proto import load

    pb = load()
    chan = channel(server, certs_dir, name, server_name)
    stub = pb.stenoxdp_pb2_grpc.StenoXdpStub(chan)
    req = pb.stenoxdp_pb2.QueryRequest(query=text, limit_packets=limit_packets, limit_bytes=limit_bytes,
                                       micros=micros, iface=iface or "", after_ns=after_ns, before_ns=before_ns)
    call = stub.Query(req, timeout=timeout)
    return RemoteAnswer(server, chan, call)


def remote_status(server: str, certs_dir, name: str = "client", timeout: float = 10.0) -> dict:
    from google.protobuf.json_format import MessageToDict

    from stenoxdp.proto import load

    pb = load()
    with channel(server, certs_dir, name) as chan:
        stub = pb.stenoxdp_pb2_grpc.StenoXdpStub(chan)
        try:
            st = stub.Status(pb.stenoxdp_pb2.StatusRequest(), timeout=timeout)
            cov = stub.Coverage(pb.stenoxdp_pb2.CoverageRequest(), timeout=timeout)
            flt = stub.CaptureFilter(pb.stenoxdp_pb2.CaptureFilterRequest(), timeout=timeout)
        except grpc.RpcError as e:
            raise _explain(e, server) from None
    return {"status": MessageToDict(st, preserving_proto_field_name=True),
            "coverage": MessageToDict(cov, preserving_proto_field_name=True).get("ifaces", []),
            "filters": MessageToDict(flt, preserving_proto_field_name=True).get("filters", [])}

"""gRPC over mutual TLS: Stenographer's steno.Stenographer/RetrievePcap (wire
compatible) and our stenoxdp.v1.StenoXdp, with real status codes:

    INVALID_ARGUMENT     bad query / arguments (the parser's message)
    RESOURCE_EXHAUSTED   too many concurrent queries, or the answer passed the server's size cap
    DEADLINE_EXCEEDED    the server's duration cap (or the client's own deadline)
    UNAUTHENTICATED      the client certificate is revoked (CRL reloaded on change)
    CANCELLED            the client stopped reading for send_timeout and was dropped

The TLS handshake itself (grpc core, require_client_auth=True) refuses a missing
certificate, one from another CA and an expired one.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from concurrent import futures

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core's per-handshake INFO lines are noise here
import grpc  # noqa: E402
from cryptography import x509

from stenoxdp.errors import QueryError, StenoError

from . import certs
from .core import Client, ClientGone, QueryService, ServerError, lower_thread_priority

log = logging.getLogger("stenoxdp.server")
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 3 << 20          # stays under grpc's default 4 MiB receive limit of clients
MIN_CHUNK = 512

_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "internal": grpc.StatusCode.INTERNAL,
}


def peer_client(ctx, proto: str) -> Client:
    c = Client(proto=proto, peer=_peer(ctx))
    pems = ctx.auth_context().get("x509_pem_cert") or []
    if pems:
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
            c.subject, c.serial = certs.subject_str(cert), cert.serial_number
        except ValueError:
            pass
    return c


def _peer(ctx) -> str:
    p = ctx.peer() or "?"
    for pre in ("ipv4:", "ipv6:"):
        if p.startswith(pre):
            return p[len(pre):]
    return p


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses revoked client certificates on every RPC (UNAUTHENTICATED)."""

    def __init__(self, svc: QueryService, revocations: certs.Revocations):
        self.svc, self.rev = svc, revocations

    def _check(self, ctx, method: str) -> None:
        lower_thread_priority()  # the pool threads only ever serve queries
        c = peer_client(ctx, "grpc")
        if not c.serial:
            self.svc.refused(c, f"no client certificate on {method}")
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate signed by the server's CA is required")
        if self.rev.is_revoked(c.serial):
            self.svc.refused(c, f"revoked certificate (serial {c.serial:x}) on {method}", "refused_revoked")
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED,
                      f"client certificate {c.subject} (serial {c.serial:x}) has been revoked")

    def intercept_service(self, continuation, details):
        h = continuation(details)
        if h is None:
            return None
        method = details.method

        if h.unary_stream:
            inner = h.unary_stream

            def unary_stream(req, ctx):
                self._check(ctx, method)
                yield from inner(req, ctx)

            return grpc.unary_stream_rpc_method_handler(unary_stream, h.request_deserializer, h.response_serializer)
        if h.unary_unary:
            inner1 = h.unary_unary

            def unary_unary(req, ctx):
                self._check(ctx, method)
                return inner1(req, ctx)

            return grpc.unary_unary_rpc_method_handler(unary_unary, h.request_deserializer, h.response_serializer)
        return h


def _abort(ctx, e: Exception):
    if isinstance(e, QueryError):
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    if isinstance(e, ServerError):
        ctx.abort(_CODES.get(e.kind, grpc.StatusCode.INTERNAL), str(e))
    ctx.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")


def _chunk_size(n: int, ctx) -> int:
    if n < 0:
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunk_size must be >= 0 (0 = 1 MiB)")
    return DEFAULT_CHUNK if n == 0 else max(MIN_CHUNK, min(MAX_CHUNK, n))


def _run(svc: QueryService, ctx, client: Client, text: str, **kw):
    """Start a query bound to this RPC; aborts the RPC on refusal."""
    try:
        a = svc.start(text, client, **kw)
    except (QueryError, ServerError) as e:
        _abort(ctx, e)
    except StenoError as e:
        ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except Exception as e:
        log.exception("grpc: query failed to start")
        ctx.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    rem = ctx.time_remaining()
    if rem is not None:
        import time

        a.deadline = min(a.deadline, time.monotonic() + rem)
    a.abort_hook = lambda why: ctx.cancel()
    ctx.add_callback(lambda: a.close("cancelled: client went away"))
    return a


def _pieces(answer, chunk: int):
    for data in answer:
        if len(data) <= chunk:
            yield data
        else:
            mv = memoryview(data)
            for i in range(0, len(data), chunk):
                yield bytes(mv[i:i + chunk])


def make_servicers(svc: QueryService):
    pb = _pb()

    class Stenographer(pb.steno_pb2_grpc.StenographerServicer):
        def RetrievePcap(self, req, ctx):
            client = peer_client(ctx, "grpc-steno")
            chunk = _chunk_size(req.chunk_size, ctx)
            if req.max_size < 0:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_size must be >= 0 (0 = no limit)")
            uid = req.uid or str(uuid.uuid4())
            a = _run(svc, ctx, client, req.query, limit_bytes=req.max_size)
            try:
                for piece in _pieces(a, chunk):
                    yield pb.steno_pb2.PcapResponse(uid=uid, pcap=piece)
            except (QueryError, ServerError, ClientGone) as e:
                _abort(ctx, e)
            except Exception as e:
                _abort(ctx, e)
            ctx.set_trailing_metadata((("steno-packets", str(a.packets)), ("steno-bytes", str(a.bytes)),
                                       ("steno-truncated", "1" if a.truncated else "0")))

    class StenoXdp(pb.stenoxdp_pb2_grpc.StenoXdpServicer):
        def Query(self, req, ctx):
            client = peer_client(ctx, "grpc")
            chunk = _chunk_size(req.chunk_size, ctx)
            if req.limit_packets < 0 or req.limit_bytes < 0:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit_packets and limit_bytes must be >= 0 (0 = none)")
            try:
                text = with_time_bounds(req.query, req.after_ns, req.before_ns)
            except QueryError as e:
                _abort(ctx, e)
            a = _run(svc, ctx, client, text, limit_packets=req.limit_packets, limit_bytes=req.limit_bytes,
                     micros=req.micros, iface=req.iface or None)
            try:
                for piece in _pieces(a, chunk):
                    yield pb.stenoxdp_pb2.QueryResponse(pcap=piece)
            except Exception as e:
                _abort(ctx, e)
            import time

            yield pb.stenoxdp_pb2.QueryResponse(summary=pb.stenoxdp_pb2.QuerySummary(
                packets=a.packets, bytes=a.bytes, truncated=a.truncated, seconds=time.monotonic() - a.t0,
                warnings=a.warnings))

        def Status(self, req, ctx):
            from stenoxdp import __version__

            st = svc.status()
            r = pb.stenoxdp_pb2.StatusResponse(version=str(__version__), uptime_seconds=st["uptime_seconds"],
                                               max_concurrent_queries=svc.limits.max_concurrent,
                                               max_answer_bytes=svc.limits.max_answer_bytes,
                                               max_query_seconds=svc.limits.max_seconds)
            r.counters.update(st["counters"])
            for s in svc.stores:
                r.stores.add(path=str(s.root), ifaces=s.ifaces(), files=len(s.files(include_open=False)))
            return r

        def Coverage(self, req, ctx):
            r = pb.stenoxdp_pb2.CoverageResponse()
            try:
                cov = svc.coverage()
            except StenoError as e:
                ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            for c in cov:
                r.ifaces.add(iface=str(c.get("iface", "")), first_ts_ns=int(c.get("first_ts_ns") or 0),
                             last_ts_ns=int(c.get("last_ts_ns") or 0), files=int(c.get("files") or 0),
                             packets=int(c.get("packets") or 0), bytes=int(c.get("bytes") or 0),
                             store=str(c.get("store", "")))
            return r

        def CaptureFilter(self, req, ctx):
            r = pb.stenoxdp_pb2.CaptureFilterResponse()
            for f in svc.capture_filters():
                r.filters.add(**f)
            return r

    return Stenographer(), StenoXdp()


def _rfc3339(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def with_time_bounds(text: str, after_ns: int, before_ns: int) -> str:
    """The query restricted to after_ns <= ts < before_ns (exact to the ns, as
    the query language's `after`/`before`); 0 = unbounded."""
    if after_ns < 0 or before_ns < 0:
        raise QueryError("after_ns and before_ns must be >= 0 (0 = unbounded)")
    if after_ns and before_ns and before_ns <= after_ns:
        raise QueryError("before_ns must be later than after_ns")
    terms = []
    if after_ns:
        terms.append(f"after {_rfc3339(after_ns)}")
    if before_ns:
        terms.append(f"before {_rfc3339(before_ns)}")
    if not terms:
        return text
    bounds = " and ".join(terms)
    return f"({text}) and {bounds}" if text.strip() else bounds


def _pb():
    from stenoxdp.proto import load

    return load()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    def __init__(self, svc: QueryService, certs_dir, host: str = "127.0.0.1", port: int = 0,
                 revocations: certs.Revocations | None = None):
        pb = _pb()
        ca, cert, key = certs.server_files(certs_dir)
        self.rev = revocations or certs.Revocations(certs_dir, log=log)
        self.pool = futures.ThreadPoolExecutor(max_workers=svc.limits.max_concurrent + 8,
                                               thread_name_prefix="steno-grpc")
        self.server = grpc.server(self.pool, interceptors=[AuthInterceptor(svc, self.rev)],
                                  options=[("grpc.so_reuseport", 0),
                                           ("grpc.max_send_message_length", MAX_CHUNK + (1 << 20)),
                                           ("grpc.keepalive_time_ms", 60_000)])
        steno, ours = make_servicers(svc)
        pb.steno_pb2_grpc.add_StenographerServicer_to_server(steno, self.server)
        pb.stenoxdp_pb2_grpc.add_StenoXdpServicer_to_server(ours, self.server)
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        addr = _hostport(host, port)
        try:
            self.port = self.server.add_secure_port(addr, creds)
        except RuntimeError as e:
            raise StenoError(f"cannot listen for gRPC on {addr}: {e} (is the port in use?)") from None
        if not self.port:
            raise StenoError(f"cannot listen for gRPC on {addr} (is the port in use, or the address not local?)")
        self.server.start()

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait(grace + 1)
        self.pool.shutdown(wait=False, cancel_futures=True)

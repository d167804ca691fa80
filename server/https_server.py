"""Stenographer's HTTPS API over mutual TLS (HTTP/1.1; curl falls back from h2
through ALPN), so Debian's unmodified `stenoread` and `stenocurl` work:

    POST /query         body = query text; headers Steno-Limit-Bytes / Steno-Limit-Packets.
                        200 application/octet-stream: the pcap, streamed with chunked
                        transfer encoding as packets are found.
                        400 text/plain: the parser's message.  503: too many queries.
                        A server limit (size, duration) hit mid-answer ends the response
                        WITHOUT the final chunk, so curl fails with "transfer closed with
                        outstanding read data remaining" -- never a silent cut-off; the
                        reason is in the audit log.
    GET /debug/stats    name<TAB>value lines
    GET /debug/config   JSON
    403                 the client certificate was revoked (CRL reloaded on change)

Each connection does its TLS handshake in its own thread (a slow handshake does
not block accept); a missing, foreign-CA or expired client certificate fails
the handshake.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509

from stenoxdp.errors import QueryError, StenoError

from . import certs
from .core import BusyError, Client, QueryService, ServerError, lower_thread_priority

log = logging.getLogger("stenoxdp.server")
HANDSHAKE_TIMEOUT = 10.0
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 256  # open HTTPS connections (one thread each); more are closed at once


def tls_context(certs_dir) -> ssl.SSLContext:
    d = Path(certs_dir)
    ca, _, _ = certs.server_files(d)  # validates, with clear errors
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(d / certs.SERVER_CERT), str(d / certs.SERVER_KEY))
    ctx.load_verify_locations(cadata=ca.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, addr, ctx: ssl.SSLContext, svc: QueryService, rev: certs.Revocations, info: dict):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.ssl_ctx, self.svc, self.rev, self.info = ctx, svc, rev, info
        self.conn_slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(addr, Handler)

    def process_request(self, request, client_address):
        if not self.conn_slots.acquire(blocking=False):
            self.svc.refused(Client("https", peer=f"{client_address[0]}:{client_address[1]}"),
                             f"more than {MAX_CONNECTIONS} open connections")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.conn_slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.conn_slots.release()

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        peer = f"{client_address[0]}:{client_address[1]}"
        lower_thread_priority()  # this connection's thread: TLS and sending run below capture too
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            reason = getattr(e, "reason", None) or type(e).__name__
            self.svc.refused(Client("https", peer=peer), f"TLS handshake failed: {reason}")
            return
        c = Client("https", peer=peer)
        der = request.getpeercert(binary_form=True)
        if der:
            cert = x509.load_der_x509_certificate(der)
            c.subject, c.serial = certs.subject_str(cert), cert.serial_number
        request.settimeout(self.svc.limits.send_timeout)
        Handler(request, client_address, self, c)

    def handle_error(self, request, client_address):
        log.debug("https: error on connection from %s", client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stenoxdp"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def __init__(self, request, client_address, server, client: Client):
        self.client = client
        super().__init__(request, client_address, server)

    def log_message(self, fmt, *args):
        log.debug("https %s: " + fmt, self.client.peer, *args)

    # -- helpers -------------------------------------------------------------
    def _plain(self, code: int, text: str, extra: dict | None = None, close: bool = False) -> None:
        body = (text.rstrip("\n") + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        if not self.client.serial:
            self._plain(401, "a client certificate signed by the server's CA is required", close=True)
            return False
        if self.server.rev.is_revoked(self.client.serial):
            self.server.svc.refused(self.client, f"revoked certificate (serial {self.client.serial:x}) "
                                    f"on {self.command} {self.path}", "refused_revoked")
            self._plain(403, f"client certificate {self.client.subject} (serial {self.client.serial:x}) "
                        f"has been revoked", close=True)
            return False
        return True

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._plain(411, "send the query with a Content-Length (curl -d does)", close=True)
            return None
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._plain(400, "bad Content-Length", close=True)
            return None
        if n < 0 or n > MAX_BODY:
            self._plain(413, f"query body of {n} bytes is too large (at most {MAX_BODY})", close=True)
            return None
        return self.rfile.read(n) if n else b""

    def _limit(self, name: str) -> int | None:
        v = self.headers.get(name)
        if v is None or v.strip() == "":
            return 0
        try:
            n = int(v.strip())
        except ValueError:
            n = -1
        if n < 0:
            self._plain(400, f"header {name}: {v!r} is not a non-negative integer")
            return None
        return n

    # -- routes ---------------------------------------------------------------
    def do_POST(self):
        if not self._authorised():
            return
        if self.path.split("?", 1)[0] != "/query":
            self._read_body()
            self._plain(404 if not self.path.startswith("/debug/") else 405, f"no POST handler for {self.path}")
            return
        body = self._read_body()
        if body is None:
            return
        lb, lp = self._limit("Steno-Limit-Bytes"), self._limit("Steno-Limit-Packets")
        if lb is None or lp is None:
            return
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self._plain(400, "the query is not valid UTF-8")
            return
        svc = self.server.svc
        try:
            answer = svc.start(text, self.client, limit_packets=lp, limit_bytes=lb)
        except QueryError as e:
            self._plain(400, f"bad query: {e}")
            return
        except BusyError as e:
            self._plain(503, str(e), {"Retry-After": "5"})
            return
        except StenoError as e:
            self._plain(500, str(e))
            return
        except Exception as e:
            log.exception("https: query failed to start")
            self._plain(500, f"internal error: {type(e).__name__}: {e}")
            return
        sock = self.connection
        answer.abort_hook = lambda why: _shutdown(sock)
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "Steno-Packets, Steno-Truncated, Steno-Warnings")
            self.send_header("Connection", "close")
            self.end_headers()
            w = self.wfile
            it = iter(answer)  # kept referenced so the except clauses below name the outcome first
            for data in it:
                w.write(b"%x\r\n" % len(data))
                w.write(data)
                w.write(b"\r\n")
            w.write(b"0\r\nSteno-Packets: %d\r\nSteno-Truncated: %d\r\nSteno-Warnings: %d\r\n\r\n"
                    % (answer.packets, int(answer.truncated), len(answer.warnings)))
        except (ServerError, QueryError) as e:
            # headers are gone: end without the last chunk so the client sees an error
            log.info("https %s: answer stopped: %s", self.client.peer, e)
        except TimeoutError:
            answer.close(f"cancelled: client accepted no data for {svc.limits.send_timeout:g} s")
        except (OSError, ssl.SSLError) as e:
            answer.close(f"cancelled: client connection failed: {type(e).__name__}")
        except Exception as e:
            answer.close(f"internal: {type(e).__name__}: {e}")
            log.exception("https: query failed")
        finally:
            answer.close()

    def do_GET(self):
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]
        svc = self.server.svc
        if path == "/debug/stats":
            st = svc.status()
            lines = [f"{k}\t{v}" for k, v in sorted(st["counters"].items())]
            lines.append(f"uptime_seconds\t{st['uptime_seconds']:.0f}")
            for s in svc.stores:
                for ifc in s.ifaces():
                    lines.append(f"store_files_{ifc}\t{len(s.files(ifc, include_open=False))}")
            self._plain(200, "\n".join(lines))
        elif path == "/debug/config":
            body = (json.dumps(self.server.info, indent=2, sort_keys=True) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/query":
            self._plain(405, "use POST /query with the query as the body (stenoread does)", {"Allow": "POST"})
        else:
            self._plain(404, f"no such path {path}: use POST /query, GET /debug/stats or GET /debug/config")


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class HttpsServer:
    def __init__(self, svc: QueryService, certs_dir, host: str = "127.0.0.1", port: int = 0,
                 revocations: certs.Revocations | None = None, info: dict | None = None):
        ctx = tls_context(certs_dir)
        rev = revocations or certs.Revocations(certs_dir, log=log)
        try:
            self.httpd = _Server((host, port), ctx, svc, rev, info or {})
        except OSError as e:
            raise StenoError(f"cannot listen for HTTPS on {host}:{port}: {e.strerror}") from None
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="steno-https", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2)

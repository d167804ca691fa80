"""Start the query server (HTTPS Stenographer API and/or gRPC) over some stores.

    from stenoxdp.server.daemon import serve, Limits
    h = serve([Store("/var/lib/stenoxdp")], "/etc/stenoxdp/certs", host="127.0.0.1", port=1234, grpc_port=1235)
    h.port, h.grpc_port      # the bound ports (pass 0 to pick free ones)
    h.stop()

Used by `stenoctl serve` and by the capture daemon (`stenoctl run`). Both
listeners share one QueryService: one concurrency limit, one audit log, one CRL.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from stenoxdp.errors import UsageError

from . import certs
from .audit import AuditLog
from .core import Limits, QueryService

log = logging.getLogger("stenoxdp.server")
__all__ = ["serve", "Limits", "Handle"]


@dataclass
class Handle:
    service: QueryService
    port: int | None = None
    grpc_port: int | None = None
    _parts: list = field(default_factory=list)

    def stop(self) -> None:
        self.service.stop()
        for p in reversed(self._parts):
            try:
                p.stop()
            except Exception as e:  # best effort on shutdown
                log.debug("stopping %s: %s", type(p).__name__, e)
        self._parts.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(stores, certs_dir, host: str = "127.0.0.1", port: int | None = None, grpc_port: int | None = None,
          limits: Limits | None = None, audit_file: os.PathLike | str | None = None, audit_stderr: bool = True,
          status_dir: os.PathLike | str | None = None, engine=None, **limit_kw) -> Handle:
    """Start the listeners asked for (port: HTTPS, grpc_port: gRPC; 0 = any free port)."""
    from stenoxdp.store import Store

    if port is None and grpc_port is None:
        raise UsageError("the server needs a port (HTTPS, Stenographer's API) and/or a grpc_port")
    stores = [s if isinstance(s, Store) else Store(s) for s in stores]
    if not stores:
        raise UsageError("the server needs at least one store directory")
    if limits is None:
        limits = Limits(**limit_kw)
    elif limit_kw:
        raise UsageError("give either limits=Limits(...) or limit keywords, not both")
    certs.server_files(certs_dir)  # clear error before anything binds
    rev = certs.Revocations(certs_dir, log=log)
    svc = QueryService(stores, limits, AuditLog(audit_file, stderr=audit_stderr), engine=engine,
                       status_dir=status_dir)
    h = Handle(svc)
    try:
        if grpc_port is not None:
            from .grpc_server import GrpcServer

            g = GrpcServer(svc, certs_dir, host, grpc_port, revocations=rev)
            h._parts.append(g)
            h.grpc_port = g.port
        if port is not None:
            from .https_server import HttpsServer

            info = {"Host": host, "Port": None, "GrpcPort": h.grpc_port, "CertPath": str(Path(certs_dir).resolve()),
                    "Stores": [str(s.root) for s in stores], "Limits": limits.as_dict(), "Server": "stenoxdp"}
            w = HttpsServer(svc, certs_dir, host, port, revocations=rev, info=info)
            info["Port"] = w.port
            h._parts.append(w)
            h.port = w.port
    except BaseException:
        h.stop()
        raise
    return h

"""stenoctl serve and stenoctl certs (init / issue / revoke / list)."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError

certs_app = typer.Typer(
    name="certs",
    help="Certificates for mutual TLS (Stenographer's file layout).\n\n"
    "Examples:\n\n"
    "  stenoctl certs init --dir /etc/stenoxdp/certs --host 198.18.0.1\n\n"
    "  stenoctl certs issue alice --dir /etc/stenoxdp/certs\n\n"
    "  stenoctl certs revoke alice --dir /etc/stenoxdp/certs",
    no_args_is_help=True,
)


@certs_app.command("init", help="Create a CA, a server certificate for HOST and the default client certificate.\n\n"
                   "Example: stenoctl certs init --dir /etc/stenoxdp/certs --host sensor1.example.org")
def certs_init(
    dir: Path = typer.Option(..., "--dir", "-d", help="Certificate directory (created if missing)."),
    host: str = typer.Option(..., "--host", help="The server's IP address or DNS name (goes into the SAN; "
                             "127.0.0.1, ::1 and localhost are always added)."),
    extra_host: List[str] = typer.Option([], "--extra-host", help="More names/IPs for the server SAN (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing CA (every old certificate stops working)."),
    owner: Optional[str] = typer.Option(None, "--owner", help="Service user that owns server_key.pem (0400), "
                                        "as Stenographer's 'stenographer' user."),
    group: Optional[str] = typer.Option(None, "--group", help="Group that may read client_key.pem (0440)."),
) -> None:
    from stenoxdp.server import certs

    paths = certs.init(dir, host, force=force, extra_hosts=extra_host, owner=owner, group=group)
    for p in paths:
        print(f"{oct(p.stat().st_mode & 0o777)[2:]:>4} {p}")


@certs_app.command("issue", help="Issue a client certificate NAME_cert.pem / NAME_key.pem.\n\n"
                   "Example: stenoctl certs issue alice --dir /etc/stenoxdp/certs")
def certs_issue(
    name: str = typer.Argument(..., help="Client name (becomes the certificate's CN)."),
    dir: Path = typer.Option(..., "--dir", "-d", help="Certificate directory made by `certs init`."),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate of that name."),
    group: Optional[str] = typer.Option(None, "--group", help="Group that may read NAME_key.pem (0440)."),
) -> None:
    from stenoxdp.server import certs

    c, k = certs.issue(dir, name, force=force, group=group)
    print(c)
    print(k)


@certs_app.command("revoke", help="Revoke client NAME: adds its serial to DIR/crl.pem; running servers refuse it "
                   "within a second, without a restart.\n\nExample: stenoctl certs revoke alice --dir /etc/stenoxdp/certs")
def certs_revoke(
    name: str = typer.Argument(..., help="Client name (NAME_cert.pem in DIR; 'client' for client_cert.pem)."),
    dir: Path = typer.Option(..., "--dir", "-d", help="Certificate directory made by `certs init`."),
) -> None:
    from stenoxdp.server import certs

    serial = certs.revoke(dir, name)
    print(f"revoked {name} (serial {serial:x}) in {Path(dir) / certs.CRL_FILE}")


@certs_app.command("list", help="List the certificates in DIR and their state (valid / expired / revoked).")
def certs_list(dir: Path = typer.Option(..., "--dir", "-d", help="Certificate directory.")) -> None:
    from stenoxdp import ui
    from stenoxdp.server import certs

    rows = [[r["name"], r["role"], r["subject"], r["serial"], r["not_after"], r["state"]]
            for r in certs.list_certs(dir)]
    ui.console.print(ui.table(f"certificates in {dir}", ["name", "role", "subject", "serial", "expires", "state"], rows))


@certs_app.command("steno-config", help="Write the Stenographer-style client config (Host, Port, CertPath) that "
                   "Debian's stenoread/stenocurl read from $STENOGRAPHER_CONFIG.\n\n"
                   "Example: stenoctl certs steno-config --dir /etc/stenoxdp/certs --port 1234 -o ~/.steno.json; "
                   "STENOGRAPHER_CONFIG=~/.steno.json stenoread 'host 198.18.0.2' -n")
def certs_steno_config(
    dir: Path = typer.Option(..., "--dir", "-d", help="Certificate directory with ca_cert.pem, client_cert.pem, "
                             "client_key.pem (stenocurl's fixed names)."),
    port: int = typer.Option(..., "--port", "-p", help="The server's HTTPS port (stenoctl serve --port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="The server's address as in its certificate's SAN."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    import json

    from stenoxdp.server import certs

    certs.client_files(dir)  # clear error when the client files are missing
    text = json.dumps({"Host": host, "Port": port, "CertPath": str(Path(dir).resolve())}, indent=2) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        print(text, end="")


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")

    @app.command(help="Serve existing stores over mutual TLS without capturing: Stenographer's HTTPS API on "
                 "--port (stenoread/stenocurl work) and gRPC on --grpc-port.\n\n"
                 "Example: stenoctl serve --dir /var/lib/stenoxdp --certs /etc/stenoxdp/certs --port 1234 --grpc-port 1235")
    def serve(
        dir: List[Path] = typer.Option(..., "--dir", "-d", help="Store directory (repeatable)."),
        certs_dir: Path = typer.Option(..., "--certs", help="Certificate directory made by `stenoctl certs init`."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: Optional[int] = typer.Option(None, "--port", "-p", help="HTTPS port (Stenographer's API)."),
        grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="gRPC port."),
        max_queries: int = typer.Option(16, "--max-queries", help="Concurrent queries; more wait up to 5 s for a "
                                        "slot, then get RESOURCE_EXHAUSTED / HTTP 503."),
        max_answer_bytes: int = typer.Option(4 << 30, "--max-answer-bytes", help="Largest answer (bytes); a bigger one "
                                             "ends with an error, never silently."),
        max_seconds: float = typer.Option(3600.0, "--max-seconds", help="Longest query (seconds)."),
        audit_log: Optional[Path] = typer.Option(None, "--audit-log", help="Also append audit lines to this file."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        from stenoxdp.server.daemon import Limits, serve as start
        from stenoxdp.store import Store

        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="stenoxdp: %(message)s")
        if port is None and grpc_port is None:
            raise UsageError("give --port (HTTPS, Stenographer's API) and/or --grpc-port (gRPC)")
        for d in dir:
            if not Path(d).is_dir():
                raise UsageError(f"store directory {d} does not exist: give the --dir of a capture or import")
        stores = [Store(d) for d in dir]
        limits = Limits(max_concurrent=max_queries, max_answer_bytes=max_answer_bytes, max_seconds=max_seconds)
        stop = threading.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda *_: stop.set())
        h = start(stores, certs_dir, host=host, port=port, grpc_port=grpc_port, limits=limits, audit_file=audit_log)
        log = logging.getLogger("stenoxdp")
        if h.port:
            log.info("HTTPS (Stenographer API) on %s:%d", host, h.port)
        if h.grpc_port:
            log.info("gRPC on %s:%d", host, h.grpc_port)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            h.stop()
            log.info("stopped")

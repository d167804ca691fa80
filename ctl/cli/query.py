"""stenoctl query / import / reindex: thin commands over stenoxdp.indexer."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError

QUERY_HELP = """Answer QUERY from a local store (or a server) as a pcap file.

Examples:

  stenoctl query 'host 198.18.0.2 and port 53 and after 10m ago' --dir /var/lib/stenoxdp -w - | tcpdump -nr -

  stenoctl query 'vlan 10 or mpls 16' --dir /var/lib/stenoxdp -w out.pcap --limit-packets 1000

  stenoctl query 'host 198.18.0.2' --config /etc/stenoxdp/stenoxdp.toml -w out.pcap   (every interface's stores)

  stenoctl query 'tcp and before 2026-01-01T00:00:00Z' --server sensor:1234 --certs /etc/stenoxdp/certs -w out.pcap
"""


def _out(write: Optional[str]):
    """(binary file, close?) for -w; refuse to write pcap to a terminal."""
    if write is None or write == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write pcap to a terminal; use -w FILE or pipe it (-w - | tcpdump -r -)")
        return sys.stdout.buffer, False
    try:
        return open(write, "wb"), True
    except OSError as e:
        raise UsageError(f"cannot write {write}: {e.strerror}") from None


def _stores(dirs: List[Path]):
    from ..store import Store

    out = []
    for d in dirs:
        if not (d / "packets").is_dir():
            raise UsageError(f"{d} is not a stenoxdp store (no packets/ directory); check --dir")
        out.append(Store(d))
    return out


def register(app: typer.Typer) -> None:
    @app.command("query", help=QUERY_HELP)
    def query_cmd(
        text: str = typer.Argument(..., metavar="QUERY", help="Query, e.g. 'host 198.18.0.2 and tcp port 443'."),
        dirs: List[Path] = typer.Option([], "--dir", "-d", help="Store directory (repeat for several stores)."),
        write: Optional[str] = typer.Option(None, "--write", "-w", help="Output pcap file, '-' = stdout."),
        limit_packets: int = typer.Option(0, "--limit-packets", min=0, help="Stop after N packets (0 = no limit)."),
        limit_bytes: int = typer.Option(0, "--limit-bytes", min=0,
                                        help="Stop after the packet that reaches N bytes (header 16, each packet len+16)."),
        micros: bool = typer.Option(False, "--micros", help="Microsecond pcap (magic a1b2c3d4) for old tools."),
        iface: Optional[str] = typer.Option(None, "--iface", help="Only this interface's packets."),
        server: Optional[str] = typer.Option(None, "--server", help="Ask a stenoxdp server HOST:PORT instead."),
        certs: Optional[Path] = typer.Option(None, "--certs", help="Client certificate directory for --server."),
        config: Optional[Path] = typer.Option(None, "--config", "-c",
                                              help="Query every store of the daemon this TOML config describes."),
    ) -> None:
        if server and (dirs or config):
            raise UsageError("give either --server or local stores (--dir/--config), not both")
        if server:
            if not certs:
                raise UsageError("--server needs --certs DIR (the client certificate directory)")
            from ..server.client import remote_query

            chunks = remote_query(server, str(certs), text, limit_packets, limit_bytes, micros=micros, iface=iface)
            warnings: list[str] = []
        else:
            if not dirs and not config:
                raise UsageError("say which store to query: --dir DIR, --config FILE (or --server HOST:PORT)")
            from ..indexer import engine

            stores = _stores(dirs)
            if config:
                from .. import config as cfgmod
                from ..store import Store

                cfg = cfgmod.load_config(config)
                stores += [Store(s.dir, s.index_dir) for ic in cfg.ifaces for s in ic.stores()
                           if (Path(s.dir) / "packets").is_dir()]
            stream = engine.query(stores, text, limit_packets=limit_packets, limit_bytes=limit_bytes,
                                  micros=micros, iface=iface)
            chunks = stream
            warnings = stream.warnings
        f, close = _out(write)
        try:
            for c in chunks:
                f.write(c)
            f.flush()
        except BrokenPipeError:
            # the reader went away (e.g. `| head`): not an error
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
        finally:
            if close:
                f.close()
        for w in warnings:
            print(f"stenoctl: warning: {w}", file=sys.stderr)
        if not server and getattr(chunks, "truncated", False):
            print(f"stenoctl: answer cut at the limit after {chunks.packets} packets", file=sys.stderr)

    @app.command("import", help="Import pcap/pcapng files into a store as if captured (frames kept byte for byte).\n\n"
                 "Example:\n\n  stenoctl import old.pcap more.pcapng --dir /var/lib/stenoxdp --iface import")
    def import_cmd(
        files: List[Path] = typer.Argument(..., metavar="FILE...", help="pcap or pcapng files (Ethernet)."),
        dir_: Path = typer.Option(..., "--dir", "-d", help="Store directory (created if missing)."),
        iface: str = typer.Option("import", "--iface", help="Interface name the packets are stored under."),
    ) -> None:
        from ..indexer import importer
        from ..store import Store

        st = Store(dir_).init()
        for p in files:
            r = importer.import_file(st, p, iface=iface)
            share = (100.0 * r.index_bytes / r.bytes) if r.bytes else 0.0
            print(f"{p}: {r.packets} packets, {r.bytes} bytes in {r.files} file(s), index {share:.2f} %")

    @app.command("reindex", help="Rebuild every index of a store from its packet files.\n\n"
                 "Example:\n\n  stenoctl reindex --dir /var/lib/stenoxdp")
    def reindex_cmd(dir_: Path = typer.Option(..., "--dir", "-d", help="Store directory.")) -> None:
        from ..indexer import importer

        (st,) = _stores([dir_])
        n = importer.reindex(st)
        print(f"reindexed {n} packet file(s)")

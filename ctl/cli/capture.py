"""stenoctl capture / status / run."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import NeedRootError, StenoError, UsageError
from ..store import pid_alive

DEFAULT_STATUS_DIR = Path(os.environ.get("STENOXDP_STATUS_DIR", "/run/stenoxdp"))


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NeedRootError(f"{what} needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN to load XDP programs "
                            f"and create AF_XDP sockets): run it with sudo")


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="stenoxdp: %(message)s")


def _run_controller(cfg) -> int:
    from ..controller import Controller

    ctl = Controller(cfg.ifaces, status_dir=cfg.status_dir, server=cfg.server)
    rc = ctl.run()
    logging.getLogger("stenoxdp").info("stopped; files finalised")
    return rc


def register(app: typer.Typer) -> None:
    @app.command(help="Capture in the foreground until Ctrl-C/SIGTERM.\n\n"
                 "Example: stenoctl capture --iface sxdp0 --dir /var/lib/stenoxdp --dedicated")
    def capture(
        iface: List[str] = typer.Option(..., "--iface", "-i", help="Interface to capture on (repeatable)."),
        dir: Path = typer.Option(..., "--dir", "-d", help="Store directory (packets/ and index/ below it)."),
        index_dir: Optional[Path] = typer.Option(None, "--index-dir", help="Index directory (default DIR/index)."),
        dedicated: bool = typer.Option(False, "--dedicated", help="The interface is a dedicated capture port: "
                                       "capture even though it has addresses or routes (the host loses its frames)."),
        filter: Optional[str] = typer.Option(None, "--filter", help="pcap-filter expression applied in the XDP program."),
        filter_hex: Optional[str] = typer.Option(None, "--filter-hex", help="Stenographer-style compiled BPF filter (hex)."),
        queues: Optional[int] = typer.Option(None, "--queues", help="RX queues to capture (default: all)."),
        rotate_seconds: float = typer.Option(60.0, "--rotate-seconds", help="Rotate packet files after this age."),
        rotate_bytes: int = typer.Option(4 << 30, "--rotate-bytes", help="Rotate packet files at this size."),
        frame_size: int = typer.Option(4096, "--frame-size", help="UMEM chunk size (2048 or 4096)."),
        write_mode: str = typer.Option("auto", "--write-mode", help="auto | direct | buffered"),
        status_dir: Path = typer.Option(DEFAULT_STATUS_DIR, "--status-dir", help="Where live status is published."),
        keep_free: float = typer.Option(10.0, "--min-free-percent",
                                        help="Delete the oldest files to keep this much of the disk free."),
        max_bytes: Optional[str] = typer.Option(None, "--max-bytes", help="Keep packets+index at most this big (e.g. 500GiB)."),
        max_age: Optional[str] = typer.Option(None, "--max-age", help="Delete files older than this (e.g. 7d, 12h)."),
        max_files: Optional[int] = typer.Option(None, "--max-files", help="Keep at most this many packet files."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        from .. import config as cfgmod

        _logging(verbose)
        retention = cfgmod.Retention(
            min_free_percent=keep_free,
            max_bytes=cfgmod.parse_bytes(max_bytes, "--max-bytes") if max_bytes else None,
            max_age_s=cfgmod.parse_duration(max_age, "--max-age") if max_age else None,
            max_files=max_files)
        if write_mode not in ("auto", "direct", "buffered"):
            raise UsageError(f"--write-mode must be auto, direct or buffered (got {write_mode!r})")
        cfg = cfgmod.from_flags(ifaces=iface, dir=dir, index_dir=index_dir, dedicated=dedicated, filter=filter,
                                filter_hex=filter_hex, queues=queues, rotate_seconds=rotate_seconds,
                                rotate_bytes=rotate_bytes, frame_size=frame_size, status_dir=status_dir,
                                write_mode=write_mode, retention=retention)
        _need_root("capture")
        raise typer.Exit(_run_controller(cfg))

    @app.command(help="Run the daemon: capture, indexing, retention and the query servers, from a config file.\n\n"
                 "Examples: stenoctl run --config /etc/stenoxdp/stenoxdp.toml\n\n"
                 "          stenoctl run --stenographer-config /etc/stenographer/config")
    def run(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="stenoxdp TOML config."),
        stenographer_config: Optional[Path] = typer.Option(None, "--stenographer-config",
                                                           help="A Stenographer JSON config to migrate from."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        from .. import config as cfgmod

        _logging(verbose)
        if bool(config) == bool(stenographer_config):
            raise UsageError("give exactly one of --config FILE or --stenographer-config FILE")
        if config:
            cfg = cfgmod.load_config(config)
        else:
            cfg, ignored = cfgmod.from_stenographer(stenographer_config)
            for line in ignored:
                logging.getLogger("stenoxdp").info("stenographer config: ignored %s", line)
        probs = cfgmod.check_paths(cfg)
        if probs:  # nothing starts half-configured: refuse before any interface is touched
            from ..errors import ConfigError

            raise ConfigError(probs[0] + (f" (and {len(probs) - 1} more problem(s))" if len(probs) > 1 else ""))
        try:
            from .. import memory

            memory.check(cfg)
        except ImportError:
            pass
        _need_root("run")
        raise typer.Exit(_run_controller(cfg))

    @app.command(help="Live status of every running capture: packets/s, bytes/s, drops per queue, files, disk.\n\n"
                 "Example: stenoctl status --json | jq '.[0].ifaces[0].xdp'")
    def status(
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every second."),
        status_dir: Path = typer.Option(DEFAULT_STATUS_DIR, "--status-dir"),
    ) -> None:
        while True:
            docs = read_status(status_dir)
            if as_json:
                print(json.dumps(docs, indent=2, default=str))
            else:
                from .. import ui

                if watch:
                    ui.console.clear()
                ui.render_status(docs)
            if not docs and not watch:
                raise typer.Exit(3)
            if not watch:
                return
            time.sleep(1.0)


def read_status(status_dir: Path) -> list[dict]:
    """The status documents of every live controller in status_dir."""
    out = []
    if not status_dir.is_dir():
        return out
    for p in sorted(status_dir.glob("*.json")):
        if not p.stem.isdigit():
            continue
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(int(doc.get("pid", p.stem))):
            out.append(doc)
    return out

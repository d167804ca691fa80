"""The one config model of stenoxdp: defaults in one place, validated once.

Sources, all ending in the same validated `Config`:
  load_config(path)           a TOML file (`[[iface]]` tables, `[iface.retention]`, `[server]`)
  from_stenographer(path)     a Stenographer JSON config (a migration path) -> (Config, ignored)
  from_flags(...)             `stenoctl capture --iface X --dir D ...`
and `dump(cfg)` prints the effective config back as TOML (`stenoctl config show`).

Every field carries its meaning in `metadata["help"]`; `docs_markdown()` turns the model into
docs/config.md. Every mistake raises ConfigError naming the field and the fix, e.g.
    iface[1].retention.min_free_percent: must be between 0 and 99 (got 120)
Nothing is started from a config that has not passed validate().
"""


from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .store import valid_iface_name

GiB = 1 << 30
MiB = 1 << 20
MAX_ROTATE_BYTES = 4 * GiB
MIN_ROTATE_BYTES = 64 * 1024
DEFAULT_STATUS_DIR = Path("/run/stenoxdp")
WRITE_MODES = ("auto", "direct", "buffered")


def _f(default: Any = dataclasses.MISSING, help: str = "", kind: str | None = None, factory: Any = None):
    md = {"help": help}
    if kind:
        md["kind"] = kind  # "bytes" | "duration" | "path" -- accepted spellings in TOML
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    if default is dataclasses.MISSING:
        return field(metadata=md)
    return field(default=default, metadata=md)


@dataclass
class Retention:
    """What is kept of one interface's data (its packet files and their indexes)."""

    min_free_percent: float = _f(10.0, "Keep at least this much of the packets file system free (and of the "
                                 "index file system, when it is another one), deleting the oldest files first. "
                                 "Stenographer's DiskFreePercentage. 0 turns it off.")
    max_bytes: int | None = _f(None, "Keep the interface's packets + index at most this big (bytes, or \"500GiB\").",
                               kind="bytes")
    max_age_s: float | None = _f(None, "Delete files whose last packet is older than this (seconds, or \"7d\", "
                                 "\"12h\", \"30m\").", kind="duration")
    max_files: int | None = _f(None, "Keep at most this many completed packet files (all queues together). "
                               "Stenographer's MaxDirectoryFiles.")


@dataclass
class StoreSpec:
    """One more store for an interface (from a multi-thread Stenographer config): queues are spread
    over the interface's stores round-robin (queue q -> stores[q % len(stores)])."""

    dir: Path = _f(help="Store root (packets/ below it).", kind="path")
    index_dir: Path | None = _f(None, "Index directory (default DIR/index).", kind="path")
    retention: Retention = _f(help="Retention of this store.", factory=Retention)


@dataclass
class IfaceConfig:
    """One captured interface."""

    name: str = _f(help="Interface to capture on, e.g. \"eth1\".")
    dir: Path = _f(help="Store root: packet files go to DIR/packets/<iface>/q<N>/.", kind="path")
    index_dir: Path | None = _f(None, "Index directory, e.g. on a faster disk (default DIR/index).", kind="path")
    dedicated: bool = _f(False, "The interface is a dedicated capture port: capture even though it has "
                         "addresses or routes (the host stops seeing its frames).")
    queues: int | None = _f(None, "RX queues to capture, 0..queues-1 (default: all RX queues of the NIC).")
    filter: str | None = _f(None, "Capture filter, a pcap-filter expression run in the XDP program "
                            "(e.g. \"not port 22\").")
    filter_hex: str | None = _f(None, "Capture filter as Stenographer's compiled classic BPF in hex "
                                "(compile_bpf.sh output). Exclusive with filter.")
    retention: Retention = _f(help="Retention of this interface's data ([iface.retention]).", factory=Retention)
    rotate_seconds: float = _f(60.0, "Close a packet file (it becomes indexed and queryable from its index) "
                               "after this many seconds.", kind="duration")
    rotate_bytes: int = _f(MAX_ROTATE_BYTES, "Close a packet file at this size (at most 4GiB). On a small file "
                           "system the daemon rotates earlier (the open files together take at most 2 % of it) so "
                           "the free-space floor holds; `stenoctl config show` says when.", kind="bytes")
    frame_size: int = _f(4096, "UMEM chunk size in bytes: 2048 or 4096 (frames longer than the chunk minus "
                         "headroom are truncated).")
    umem_frames: int = _f(16384, "UMEM chunks per queue (a power of two, at least ring_size). Memory locked per "
                          "queue is frame_size * umem_frames plus the rings.")
    ring_size: int = _f(8192, "Entries in each AF_XDP ring (RX, fill); a power of two. At 1.5 Mpps an 8192-entry "
                        "ring absorbs a 5.5 ms stall of the writer.")
    batch_size: int = _f(512, "Descriptors taken from the RX ring per batch (1..ring_size).")
    write_mode: str = _f("auto", "How packet files are written: auto (O_DIRECT when the file system allows it), "
                         "direct, or buffered.")
    flush_interval: float = _f(0.5, "Seconds between flushes of the open file (bounds what a crash can lose and "
                               "how fresh the open file is to queries).", kind="duration")
    extra_stores: list[StoreSpec] = _f(help="More stores for this interface; queues are spread over "
                                       "[dir] + extra_stores round-robin. Set by --stenographer-config with "
                                       "several Threads.", factory=list)

    def stores(self) -> list[StoreSpec]:
        """All stores of the interface, the primary first."""
        return [StoreSpec(self.dir, self.index_dir, self.retention)] + list(self.extra_stores)

    def store_for_queue(self, q: int) -> StoreSpec:
        s = self.stores()
        return s[q % len(s)]


@dataclass
class ServerConfig:
    """The query servers: Stenographer's HTTPS API (mutual TLS) and gRPC."""

    host: str = _f("127.0.0.1", "Address the servers listen on (an IP literal, like Stenographer's Host).")
    port: int | None = _f(None, "Port of the Stenographer-compatible HTTPS API (POST /query); none = off.")
    grpc_port: int | None = _f(None, "Port of the gRPC service (steno.Stenographer/RetrievePcap); none = off.")
    certs: Path | None = _f(None, "Certificate directory as made by stenokeys: ca_cert.pem, "
                            "server_cert.pem, server_key.pem (clients need a certificate signed by the CA).",
                            kind="path")
    max_concurrent: int = _f(8, "Queries answered at once; more wait.")
    max_answer_bytes: int | None = _f(None, "Cut an answer off after this many bytes of pcap (none = no limit).",
                                      kind="bytes")
    max_seconds: float | None = _f(None, "Cut a query off after this many seconds (none = no limit).",
                                   kind="duration")


@dataclass
class Config:
    """The whole daemon."""

    ifaces: list[IfaceConfig] = _f(help="Captured interfaces ([[iface]] tables), at least one.", factory=list)
    server: ServerConfig | None = _f(None, "Query servers ([server]); none = capture only.")
    status_dir: Path = _f(DEFAULT_STATUS_DIR, "Where live status is published for `stenoctl status`.",
                          kind="path")


# ---------------------------------------------------------------------------- parsing helpers
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_DUR = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_bytes(v: Any, where: str) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{where}: must be a size in bytes, e.g. 4294967296 or \"4GiB\" (got {v!r})")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ConfigError(f"{where}: must be a size in bytes, e.g. 4294967296 or \"4GiB\" (got {v!r})")


def parse_duration(v: Any, where: str) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{where}: must be a duration in seconds, e.g. 60 or \"7d\", \"12h\", \"30m\" (got {v!r})")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).lower() in _DUR:
            return float(m.group(1)) * _DUR[m.group(2).lower()]
    raise ConfigError(f"{where}: must be a duration in seconds, e.g. 60 or \"7d\", \"12h\", \"30m\" (got {v!r})")


def _type_of(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return t.replace(" | None", "")


def _coerce(f: dataclasses.Field, v: Any, where: str, base: Path | None) -> Any:
    t = _type_of(f)
    kind = f.metadata.get("kind")
    if v is None:
        return None
    if kind == "bytes":
        return parse_bytes(v, where)
    if kind == "duration":
        return parse_duration(v, where)
    if t == "Path":
        if not isinstance(v, (str, Path)) or not str(v):
            raise ConfigError(f"{where}: must be a path string, e.g. \"/var/lib/stenoxdp\" (got {v!r})")
        p = Path(v).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return p
    if t == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: must be true or false (got {v!r})")
        return v
    if t == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise ConfigError(f"{where}: must be a whole number (got {v!r})")
        return v
    if t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: must be a number (got {v!r})")
        return float(v)
    if t == "str":
        if not isinstance(v, str):
            raise ConfigError(f"{where}: must be a string (got {v!r})")
        return v
    raise AssertionError(f"unhandled type {t} for {where}")


def _build(cls, data: Any, where: str, base: Path | None):
    """A dataclass from a TOML table: unknown keys and wrong types are errors naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table (got {data!r})")
    known = {f.name: f for f in fields(cls)}
    for k in data:
        if k not in known:
            if cls is not Config and k in {f.name for f in fields(Config)}:
                raise ConfigError(f"{where}.{k}: {k} is a top-level key; in TOML it must come before the first "
                                  f"[[iface]] or [server] table")
            near = difflib.get_close_matches(k, list(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where + '.' if where else ''}{k}: unknown key{hint}")
    kw = {}
    for name, f in known.items():
        w = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{w}: missing; it is required ({f.metadata.get('help', '')})")
            continue
        v = data[name]
        t = _type_of(f)
        if t == "Retention":
            kw[name] = _build(Retention, v, w, base)
        elif t == "ServerConfig":
            kw[name] = _build(ServerConfig, v, w, base)
        elif t == "list[StoreSpec]":
            if not isinstance(v, list):
                raise ConfigError(f"{w}: must be a list of tables ([[iface.extra_stores]])")
            kw[name] = [_build(StoreSpec, x, f"{w}[{i}]", base) for i, x in enumerate(v)]
        elif t == "list[IfaceConfig]":
            if not isinstance(v, list):
                raise ConfigError(f"{w}: must be a list of [[iface]] tables")
            kw[name] = [_build(IfaceConfig, x, f"iface[{i}]", base) for i, x in enumerate(v)]
        else:
            kw[name] = _coerce(f, v, w, base)
    return cls(**kw)


# ---------------------------------------------------------------------------- validation
def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_retention(r: Retention, w: str) -> None:
    if not (0 <= r.min_free_percent <= 99) or math.isnan(r.min_free_percent):
        raise ConfigError(f"{w}.min_free_percent: must be between 0 and 99 (got {r.min_free_percent:g})")
    if r.max_bytes is not None and r.max_bytes < MiB:
        raise ConfigError(f"{w}.max_bytes: must be at least 1MiB, or left out for no limit (got {r.max_bytes})")
    if r.max_age_s is not None and not (r.max_age_s > 0):
        raise ConfigError(f"{w}.max_age_s: must be more than 0 seconds, or left out for no limit "
                          f"(got {r.max_age_s:g})")
    if r.max_files is not None and r.max_files < 1:
        raise ConfigError(f"{w}.max_files: must be at least 1, or left out for no limit (got {r.max_files})")


def _check_filter_hex(h: str, w: str) -> None:
    s = h.strip()
    if not re.fullmatch(r"[0-9a-fA-F]+", s) or len(s) % 16:
        raise ConfigError(f"{w}: must be classic BPF in hex, 16 hex digits per instruction as written by "
                          f"Stenographer's compile_bpf.sh (got {h[:40]!r})")


def validate(cfg: Config) -> Config:
    """Check everything that can be checked without touching the system. Returns cfg."""
    if not cfg.ifaces:
        raise ConfigError("iface: no interface configured; add an [[iface]] table with name and dir")
    seen: dict[str, int] = {}
    for i, c in enumerate(cfg.ifaces):
        w = f"iface[{i}]"
        if not valid_iface_name(c.name):
            raise ConfigError(f"{w}.name: {c.name!r} is not an interface name (letters, digits, _ . : @ -, "
                              f"at most 64 characters)")
        if c.name in seen:
            raise ConfigError(f"{w}.name: {c.name!r} is already captured by iface[{seen[c.name]}]; list each "
                              f"interface once")
        seen[c.name] = i
        if c.queues is not None and not (1 <= c.queues <= 1024):
            raise ConfigError(f"{w}.queues: must be between 1 and 1024, or left out for all RX queues "
                              f"(got {c.queues})")
        if c.filter is not None and c.filter_hex is not None:
            raise ConfigError(f"{w}.filter_hex: give either filter or filter_hex, not both")
        if c.filter is not None and not c.filter.strip():
            raise ConfigError(f"{w}.filter: empty; leave it out to capture everything")
        if c.filter_hex is not None:
            _check_filter_hex(c.filter_hex, f"{w}.filter_hex")
        _check_retention(c.retention, f"{w}.retention")
        if not (0 < c.rotate_seconds <= 86400):
            raise ConfigError(f"{w}.rotate_seconds: must be more than 0 and at most 86400 (got {c.rotate_seconds:g})")
        if not (MIN_ROTATE_BYTES <= c.rotate_bytes <= MAX_ROTATE_BYTES):
            raise ConfigError(f"{w}.rotate_bytes: must be between 64KiB and 4GiB (got {c.rotate_bytes})")
        if c.frame_size not in (2048, 4096):
            raise ConfigError(f"{w}.frame_size: must be 2048 or 4096 (got {c.frame_size})")
        if not _pow2(c.ring_size) or not (64 <= c.ring_size <= 65536):
            raise ConfigError(f"{w}.ring_size: must be a power of two between 64 and 65536 (got {c.ring_size})")
        if not _pow2(c.umem_frames) or c.umem_frames > 1 << 20:
            raise ConfigError(f"{w}.umem_frames: must be a power of two, at most 1048576 (got {c.umem_frames})")
        if c.umem_frames < c.ring_size:
            raise ConfigError(f"{w}.umem_frames: must be at least ring_size ({c.ring_size}) so the fill ring can "
                              f"be filled (got {c.umem_frames}); raise umem_frames or lower ring_size")
        if not (1 <= c.batch_size <= c.ring_size):
            raise ConfigError(f"{w}.batch_size: must be between 1 and ring_size ({c.ring_size}) (got {c.batch_size})")
        if c.write_mode not in WRITE_MODES:
            raise ConfigError(f"{w}.write_mode: must be one of {', '.join(WRITE_MODES)} (got {c.write_mode!r})")
        if not (0 < c.flush_interval <= 60):
            raise ConfigError(f"{w}.flush_interval: must be more than 0 and at most 60 (got {c.flush_interval:g})")
        for j, s in enumerate(c.extra_stores):
            _check_retention(s.retention, f"{w}.extra_stores[{j}].retention")
        paths = [(str(s.dir), str(s.index_dir) if s.index_dir else None) for s in c.stores()]
        if len(set(p[0] for p in paths)) != len(paths):
            raise ConfigError(f"{w}.extra_stores: two stores of {c.name} share a dir; give each its own")
    s = cfg.server
    if s is not None:
        import ipaddress

        try:
            ipaddress.ip_address(s.host)
        except ValueError:
            raise ConfigError(f"server.host: must be an IP address such as \"127.0.0.1\" or \"::1\" (got {s.host!r})")
        for nm in ("port", "grpc_port"):
            v = getattr(s, nm)
            if v is not None and not (1 <= v <= 65535):
                raise ConfigError(f"server.{nm}: must be between 1 and 65535, or left out (got {v})")
        if s.port is not None and s.port == s.grpc_port:
            raise ConfigError(f"server.grpc_port: must differ from server.port ({s.port})")
        if (s.port or s.grpc_port) and s.certs is None:
            raise ConfigError("server.certs: required when a server port is set (a directory with ca_cert.pem, "
                              "server_cert.pem, server_key.pem; `stenoctl certs` or stenokeys make one)")
        if s.max_concurrent < 1:
            raise ConfigError(f"server.max_concurrent: must be at least 1 (got {s.max_concurrent})")
        if s.max_answer_bytes is not None and s.max_answer_bytes < 24:
            raise ConfigError(f"server.max_answer_bytes: must be at least 24, or left out (got {s.max_answer_bytes})")
        if s.max_seconds is not None and not (s.max_seconds > 0):
            raise ConfigError(f"server.max_seconds: must be more than 0, or left out (got {s.max_seconds:g})")
    return cfg


def check_paths(cfg: Config) -> list[str]:
    """Problems with the system a config points at (run before start; `config show` lists them)."""
    probs = []
    for i, c in enumerate(cfg.ifaces):
        for s in c.stores():
            for nm, p in (("dir", s.dir), ("index_dir", s.index_dir)):
                if p is None:
                    continue
                q = Path(p)
                while not q.exists() and q != q.parent:
                    q = q.parent
                if not q.is_dir():
                    probs.append(f"iface[{i}].{nm}: {p} cannot be created ({q} is not a directory)")
    s = cfg.server
    if s is not None and s.certs is not None and (s.port or s.grpc_port):
        for fn in ("ca_cert.pem", "server_cert.pem", "server_key.pem"):
            if not (s.certs / fn).exists():
                probs.append(f"server.certs: {s.certs / fn} is missing; make the certificates first")
    return probs


# ---------------------------------------------------------------------------- sources
def from_dict(data: dict, base: Path | None = None) -> Config:
    data = dict(data)
    if "iface" in data:
        data["ifaces"] = data.pop("iface")
        if isinstance(data["ifaces"], dict):
            data["ifaces"] = [data["ifaces"]]
    elif "ifaces" not in data:
        raise ConfigError("iface: no interface configured; add an [[iface]] table with name and dir")
    if "server" in data and data["server"] is not None:
        pass
    cfg = _build(Config, data, "", base)
    return validate(cfg)


def load_config(path: str | Path) -> Config:
    """A TOML config file -> validated Config. Relative paths are relative to the file's folder."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror}")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}")
    try:
        return from_dict(data, p.resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}", e.detail) from None


def from_flags(ifaces: list[str] | str, dir: Path | str, index_dir: Path | str | None = None, dedicated: bool = False,
               filter: str | None = None, filter_hex: str | None = None, queues: int | None = None,
               rotate_seconds: float = 60.0, rotate_bytes: int = MAX_ROTATE_BYTES, frame_size: int = 4096,
               status_dir: Path | str = DEFAULT_STATUS_DIR, retention: Retention | None = None,
               server: ServerConfig | None = None, **extra: Any) -> Config:
    """`stenoctl capture` flags -> validated Config (one store dir shared by every --iface)."""
    if isinstance(ifaces, str):
        ifaces = [ifaces]
    known = {f.name for f in fields(IfaceConfig)}
    for k in extra:
        if k not in known:
            raise ConfigError(f"--{k.replace('_', '-')}: not a capture setting")
    base = Path.cwd()
    out = []
    for name in ifaces:
        out.append(IfaceConfig(name=name, dir=(base / Path(dir)).resolve() if not Path(dir).is_absolute() else Path(dir),
                               index_dir=Path(index_dir).resolve() if index_dir else None, dedicated=dedicated,
                               queues=queues, filter=filter, filter_hex=filter_hex,
                               retention=dataclasses.replace(retention) if retention else Retention(),
                               rotate_seconds=float(rotate_seconds), rotate_bytes=int(rotate_bytes),
                               frame_size=int(frame_size), **extra))
    try:
        return validate(Config(ifaces=out, server=server, status_dir=Path(status_dir)))
    except ConfigError as e:
        # name the flag, not the model field
        msg = str(e)
        m = re.match(r"iface\[\d+\]\.(?:retention\.)?([a-z_]+)(.*)", msg)
        if m:
            msg = f"--{m.group(1).replace('_', '-')}{m.group(2)}"
        raise ConfigError(msg) from None


# ---- Stenographer ---------------------------------------------------------
STENO_DEFAULT_FREE = 10.0
STENO_DEFAULT_MAX_FILES = 30000
_STENO_FLAG_NOTES = {
    "threads": "set by stenographer from Threads; stenoxdp captures every RX queue (set queues to limit)",
    "blocks": "ring memory is sized by frame_size * umem_frames per queue (see `stenoctl config show`)",
    "blocksize_kb": "ring memory is sized by frame_size * umem_frames per queue",
    "aiops": "files are written with O_DIRECT batches (write_mode)",
    "fanout_type": "AF_XDP uses the NIC's RX queues, not AF_PACKET fanout",
    "fanout_id": "AF_XDP uses the NIC's RX queues, not AF_PACKET fanout",
    "seccomp": "no seccomp sandbox (the writers run as separate processes)",
    "uid": "privileges are not dropped by stenoxdp",
    "gid": "privileges are not dropped by stenoxdp",
    "preallocate_file_mb": "files are not preallocated",
    "index_nicelevel": "indexing runs in the daemon",
    "no_index": "stenoxdp always indexes",
    "no_promisc": "the XDP program sees what the NIC delivers; promiscuous mode is left as it is",
    "no_watchdogs": "stenoxdp has no capture watchdog that could abort on an idle link",
    "blockage_sec": "the open file is flushed every flush_interval seconds",
    "stats_blocks": "stats are in `stenoctl status`",
    "stats_sec": "stats are in `stenoctl status`",
    "count": "capture runs until stopped",
    "dir": "set per thread from Threads",
    "iface": "set from Interface",
    "v": "logging is set by stenoctl -v",
    "q": "logging is set by stenoctl -v",
}


def from_stenographer(path: str | Path) -> tuple[Config, list[str]]:
    """A Stenographer JSON config -> (validated Config, what was ignored and why)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such Stenographer config file")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}")
    except ValueError as e:
        raise ConfigError(f"{p}: not valid JSON: {e}")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must be a JSON object like /etc/stenographer/config")
    ignored: list[str] = []
    W = f"{p}: "
    iface = data.get("Interface")
    if not isinstance(iface, str) or not iface:
        raise ConfigError(W + "Interface: missing; Stenographer's config names the interface to capture on")
    threads = data.get("Threads")
    if not isinstance(threads, list) or not threads:
        raise ConfigError(W + "Threads: missing or empty; give at least one {PacketsDirectory, IndexDirectory}")
    stores: list[StoreSpec] = []
    for i, t in enumerate(threads):
        w = f"Threads[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(W + f"{w}: must be an object with PacketsDirectory and IndexDirectory")
        pd, ix = t.get("PacketsDirectory"), t.get("IndexDirectory")
        if not isinstance(pd, str) or not pd:
            raise ConfigError(W + f"{w}.PacketsDirectory: missing")
        if ix is not None and not isinstance(ix, str):
            raise ConfigError(W + f"{w}.IndexDirectory: must be a path string")
        free = t.get("DiskFreePercentage", STENO_DEFAULT_FREE)
        mf = t.get("MaxDirectoryFiles", STENO_DEFAULT_MAX_FILES)
        if isinstance(free, bool) or not isinstance(free, (int, float)):
            raise ConfigError(W + f"{w}.DiskFreePercentage: must be a number (got {free!r})")
        if isinstance(mf, bool) or not isinstance(mf, int):
            raise ConfigError(W + f"{w}.MaxDirectoryFiles: must be a whole number (got {mf!r})")
        if free == 0:  # Stenographer treats 0 as "use the default"
            free = STENO_DEFAULT_FREE
        if mf == 0:
            mf = STENO_DEFAULT_MAX_FILES
        ret = Retention(min_free_percent=float(free), max_files=int(mf))
        try:
            _check_retention(ret, w)
        except ConfigError as e:
            msg = str(e).replace(".min_free_percent", ".DiskFreePercentage").replace(".max_files", ".MaxDirectoryFiles")
            raise ConfigError(W + msg) from None
        stores.append(StoreSpec(Path(pd), Path(ix) if ix else None, ret))
        for k in t:
            if k not in ("PacketsDirectory", "IndexDirectory", "DiskFreePercentage", "MaxDirectoryFiles"):
                ignored.append(f"{w}.{k}: unknown thread setting")
    if len(stores) > 1:
        ignored.append(f"Threads: {len(stores)} threads become {len(stores)} stores of {iface}; RX queue q writes "
                       f"to Threads[q % {len(stores)}]'s directories")
    ignored.append("Threads[*].PacketsDirectory: Stenographer's own packet files there are neither read nor deleted "
                   "(stenoxdp writes below PacketsDirectory/packets/); they still take disk space")
    kw: dict[str, Any] = {}
    for fl in data.get("Flags") or []:
        if not isinstance(fl, str):
            ignored.append(f"Flags: {fl!r}: not a string")
            continue
        m = re.fullmatch(r"-{1,2}([A-Za-z_]+)(?:=(.*))?", fl.strip())
        if not m:
            ignored.append(f"Flags: {fl!r}: not a stenotype flag")
            continue
        k, v = m.group(1), m.group(2)
        try:
            if k == "filter" and v:
                _check_filter_hex(v, "Flags --filter")
                kw["filter_hex"] = v
            elif k == "fileage_sec" and v:
                kw["rotate_seconds"] = float(int(v))
            elif k == "filesize_mb" and v:
                kw["rotate_bytes"] = min(int(v) * MiB, MAX_ROTATE_BYTES)
            else:
                ignored.append(f"Flags: {fl}: " + _STENO_FLAG_NOTES.get(k, "unknown stenotype flag"))
        except ValueError:
            raise ConfigError(W + f"Flags: {fl!r}: not a number")
        except ConfigError as e:
            raise ConfigError(W + str(e)) from None
    first = stores[0]
    ic = IfaceConfig(name=iface, dir=first.dir, index_dir=first.index_dir, retention=first.retention,
                     dedicated=False, extra_stores=stores[1:], **kw)
    ignored.append(f"Interface: {iface} must be a capture-only port: capture on AF_XDP takes its frames from the "
                   f"host, so an interface with addresses or routes is refused unless a TOML config sets "
                   f"dedicated = true for it")
    server = None
    host = data.get("Host", "127.0.0.1")
    port = data.get("Port")
    certs = data.get("CertPath")
    rpc = data.get("Rpc")
    grpc_port = None
    max_answer = None
    if isinstance(rpc, dict) and rpc:
        grpc_port = rpc.get("ServerPort")
        if grpc_port is not None and (isinstance(grpc_port, bool) or not isinstance(grpc_port, int)):
            raise ConfigError(W + f"Rpc.ServerPort: must be a port number (got {grpc_port!r})")
        if rpc.get("ServerPcapMaxSize"):
            max_answer = rpc["ServerPcapMaxSize"]
            if isinstance(max_answer, bool) or not isinstance(max_answer, int):
                raise ConfigError(W + f"Rpc.ServerPcapMaxSize: must be a whole number (got {max_answer!r})")
        for k in rpc:
            if k in ("CaCert", "ServerKey", "ServerCert"):
                ignored.append(f"Rpc.{k}: the gRPC server uses the certificates in CertPath "
                               f"(ca_cert.pem, server_cert.pem, server_key.pem)")
            elif k == "ServerPcapPath":
                ignored.append("Rpc.ServerPcapPath: answers are streamed, no temporary pcap files")
            elif k in ("ClientPcapChunkSize", "ClientPcapMaxSize"):
                ignored.append(f"Rpc.{k}: a client setting; clients send chunk_size/max_size per request")
            elif k not in ("ServerPort", "ServerPcapMaxSize"):
                ignored.append(f"Rpc.{k}: unknown Rpc setting")
    if port is not None or grpc_port is not None:
        if not isinstance(host, str):
            raise ConfigError(W + f"Host: must be an IP address string (got {host!r})")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise ConfigError(W + f"Port: must be a port number (got {port!r})")
        if certs is not None and not isinstance(certs, str):
            raise ConfigError(W + f"CertPath: must be a path string (got {certs!r})")
        server = ServerConfig(host=host, port=port, grpc_port=grpc_port,
                              certs=Path(certs) if certs else None, max_answer_bytes=max_answer)
    for k in data:
        if k in ("Threads", "Interface", "Flags", "Host", "Port", "CertPath", "Rpc"):
            continue
        if k == "StenotypePath":
            ignored.append("StenotypePath: capture is built in (AF_XDP), stenotype is not run")
        elif k == "MaxOpenFiles":
            ignored.append("MaxOpenFiles: stenoxdp keeps no index files open between queries")
        else:
            ignored.append(f"{k}: unknown Stenographer setting")
    cfg = Config(ifaces=[ic], server=server)
    try:
        validate(cfg)
    except ConfigError as e:
        msg = (str(e).replace("server.port", "Port").replace("server.host", "Host").replace("server.certs", "CertPath")
               .replace("server.grpc_port", "Rpc.ServerPort").replace("iface[0].name", "Interface"))
        raise ConfigError(W + msg) from None
    return cfg, ignored


# ---------------------------------------------------------------------------- output
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "nan"
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string for our purposes
    raise TypeError(v)


def _human_bytes(n: int) -> str:
    for u, s in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s and n % s == 0:
            return f"{n // s}{u}"
    return str(n)


def _emit(obj: Any, prefix: str, out: list[str], array: bool = False) -> None:
    scalars, tables = [], []
    for f in fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) or (isinstance(v, list) and v and dataclasses.is_dataclass(v[0])):
            tables.append((f.name, v))
        elif isinstance(v, list):
            continue  # empty list of tables
        elif v is None:
            out_line = f"# {f.name} = (none)"
            scalars.append(out_line)
        else:
            line = f"{f.name} = {_toml_value(v)}"
            if f.metadata.get("kind") == "bytes" and isinstance(v, int) and v >= 1024:
                line += f"  # {_human_bytes(v)}"
            scalars.append(line)
    if prefix:
        out.append(f"[[{prefix}]]" if array else f"[{prefix}]")
    out.extend(scalars)
    out.append("")
    for name, v in tables:
        p = f"{prefix}.{name}" if prefix else name
        if isinstance(v, list):
            for x in v:
                _emit(x, p, out, array=True)
        else:
            _emit(v, p, out)


def dump(cfg: Config) -> str:
    """The effective config as TOML; load_config(dump(cfg)) gives cfg back."""
    out: list[str] = ["# stenoxdp effective config", f"status_dir = {_toml_value(cfg.status_dir)}", ""]
    for ic in cfg.ifaces:
        _emit(ic, "iface", out, array=True)
    if cfg.server is not None:
        _emit(cfg.server, "server", out)
    return "\n".join(out).rstrip() + "\n"


def to_dict(cfg: Config) -> dict:
    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        d = f.default
        if d is None:
            return "none"
        if f.metadata.get("kind") == "bytes" and isinstance(d, int):
            return f"`{_human_bytes(d)}`"
        return f"`{_toml_value(d)}`"
    if f.default_factory is not dataclasses.MISSING:
        d = f.default_factory()
        return "`[]`" if isinstance(d, list) else "see table"
    return "**required**"


def _type_text(f: dataclasses.Field) -> str:
    t = _type_of(f)
    kind = f.metadata.get("kind")
    t = {"Path": "path", "int": "integer", "float": "number", "str": "string", "bool": "boolean"}.get(t, t)
    if kind == "bytes":
        t = "size (bytes or \"4GiB\")"
    elif kind == "duration":
        t = "duration (seconds or \"7d\")"
    return t + (" or none" if "None" in str(f.type) else "")


def docs_markdown() -> str:
    """docs/config.md, generated from the model (`stenoctl config docs`)."""
    sections = [
        ("Top level", Config, ""),
        ("`[[iface]]` — one per captured interface", IfaceConfig, "iface."),
        ("`[iface.retention]` — what is kept", Retention, "iface.retention."),
        ("`[[iface.extra_stores]]` — more stores for one interface", StoreSpec, "iface.extra_stores."),
        ("`[server]` — query servers", ServerConfig, "server."),
    ]
    out = ["# stenoxdp configuration reference", "",
           "<!-- generated by `stenoctl config docs` from ctl/config.py; do not edit by hand -->", "",
           "A TOML file given to `stenoctl run --config FILE`; `stenoctl config show --config FILE` prints the "
           "effective config and the memory the daemon will lock. `stenoctl run --stenographer-config "
           "/etc/stenographer/config` maps a Stenographer JSON config instead and lists what it ignores.",
           "Relative paths are relative to the config file. Every mistake is reported with the field's name, "
           "e.g. `iface[1].retention.min_free_percent: must be between 0 and 99 (got 120)`; nothing starts "
           "until the whole config is valid.", "",
           "```toml", EXAMPLE.strip(), "```", ""]
    for title, cls, pfx in sections:
        out += [f"## {title}", "", (cls.__doc__ or "").strip(), "", "| field | type | default | meaning |",
                "|---|---|---|---|"]
        for f in fields(cls):
            nm = "[[iface]]" if cls is Config and f.name == "ifaces" else f.name
            out.append(f"| `{pfx}{nm}` | {_type_text(f)} | {_default_text(f)} | "
                       f"{f.metadata.get('help', '').replace('|', '/')} |")
        out.append("")
    out += ["## Mapping from Stenographer's config", "",
            "| Stenographer | stenoxdp |", "|---|---|",
            "| `Interface` | `iface.name` (dedicated = false: an interface with addresses is refused) |",
            "| `Threads[0].PacketsDirectory` / `IndexDirectory` | `iface.dir` / `iface.index_dir` |",
            "| `Threads[i>0]` | `iface.extra_stores[i-1]` (queue q writes to thread q % n) |",
            "| `Threads[i].DiskFreePercentage` (default 10) | `retention.min_free_percent` |",
            "| `Threads[i].MaxDirectoryFiles` (default 30000) | `retention.max_files` |",
            "| `Host`, `Port`, `CertPath` | `server.host`, `server.port`, `server.certs` |",
            "| `Rpc.ServerPort`, `Rpc.ServerPcapMaxSize` | `server.grpc_port`, `server.max_answer_bytes` |",
            "| `Flags`: `--filter=HEX`, `--fileage_sec`, `--filesize_mb` | `filter_hex`, `rotate_seconds`, "
            "`rotate_bytes` |",
            "| `StenotypePath`, `MaxOpenFiles`, other `Flags`, `Rpc` certificate paths | ignored, each listed "
            "with the reason |", ""]
    return "\n".join(out)


EXAMPLE = """
status_dir = "/run/stenoxdp"

[[iface]]
name = "eth1"
dir = "/data/capture"
index_dir = "/ssd/index"
dedicated = true
filter = "not port 22"

[iface.retention]
min_free_percent = 10
max_age_s = "30d"

[[iface]]
name = "eth2"            # a quiet link on another disk keeps a longer history
dir = "/data2/capture"
queues = 2
rotate_seconds = 300

[iface.retention]
max_bytes = "500GiB"

[server]
host = "127.0.0.1"
port = 1234
certs = "/etc/stenographer/certs"
"""

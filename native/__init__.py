"""The native batch helper: a small C library (native/sxdp_native.c, sharing
bpf/sxdp.h and bpf/parse.h with the XDP program) called through ctypes once
per batch -- never per packet. Built by the project's setup with the system
compiler into a cache keyed by the sources' hash; rebuilt when they change."""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BPF_DIR = HERE.parent / "bpf"
C_FILES = sorted(HERE.glob("*.c"))  # sxdp_native.c (gather, pcap indexing), sxdp_rx.c (writer's RX batch)
SOURCES = C_FILES + [BPF_DIR / "sxdp.h", BPF_DIR / "parse.h"]
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"]


def _cache_dir() -> Path:
    base = os.environ.get("STENOXDP_CACHE") or (
        "/var/cache/stenoxdp" if os.geteuid() == 0 else os.path.join(os.path.expanduser("~"), ".cache", "stenoxdp")
    )
    return Path(base)


def _digest() -> str:
    h = hashlib.sha256()
    for p in SOURCES:
        if p.exists():
            h.update(p.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def lib_path() -> Path:
    return _cache_dir() / f"libsxdp-{_digest()}.so"


def build(force: bool = False) -> Path:
    out = lib_path()
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = ["gcc", *CFLAGS, f"-I{BPF_DIR}", "-o", str(tmp), *map(str, C_FILES)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        from stenoxdp.errors import StenoError

        raise StenoError("could not build the native batch helper (gcc failed)", detail=r.stderr)
    os.replace(tmp, out)
    return out


_LIB: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """The loaded helper (built on first use if setup did not)."""
    global _LIB
    if _LIB is None:
        _LIB = ctypes.CDLL(str(build()))
        _declare(_LIB)
    return _LIB


def _declare(L: ctypes.CDLL) -> None:
    """ctypes signatures; kept next to the C prototypes' documentation."""
    from . import api

    api.declare(L)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "build":
        print(build(force="--force" in sys.argv))
    else:
        print(lib_path())

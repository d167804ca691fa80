"""The XDP capture program: a pure plan (``render``) and a thin apply (``load``).

``render(...)`` turns parameters into the exact C source and compile flags
(what ``stenoctl bpf show`` prints); ``load(...)`` compiles it with bcc, loads
it into the kernel and returns a :class:`LoadedProgram`. bcc is imported only
inside ``load`` so that ``stenoctl --help`` works without it.

The program (bpf/capture.c) includes bpf/sxdp.h and bpf/parse.h. A capture
filter is C text that defines ``SXDP_FILTER_DEFINED`` and
``static __always_inline int sxdp_filter(void *data, void *data_end, __u32 wirelen)``;
it is placed in front of the program source.

BPF_PROG_TEST_RUN on this kernel (6.18): for XDP the returned data starts at
``data_meta``, i.e. ``out_bytes`` = the 32 metadata bytes followed by the
(possibly truncated) frame, when the program reserved metadata (checked by
tests/kernel/test_xdp_testrun.py). ``LoadedProgram.test_run`` returns exactly
what the kernel hands back; ``split_test_output`` splits it.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import struct
import tempfile
import threading
import time
from pathlib import Path

from . import layout
from .errors import BpfCompileError, InterfaceError, NeedRootError, StenoError, VerifierError

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
PROGRAM_FILE = BPF_DIR / "capture.c"
FUNC_NAME = "sxdp_capture"
XDP_PACKET_HEADROOM = 256
XSKS_ENTRIES = 64
PIN_NAMES = ("xsks", "clock")

# XDP attach flags (linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODES = {"native": XDP_FLAGS_DRV_MODE, "driver": XDP_FLAGS_DRV_MODE, "skb": XDP_FLAGS_SKB_MODE, "generic": XDP_FLAGS_SKB_MODE}

# XDP return codes
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)


def max_caplen_for_chunk(chunk_size: int) -> int:
    """Longest frame kept whole in a UMEM chunk of ``chunk_size`` bytes."""
    return chunk_size - XDP_PACKET_HEADROOM - layout.META_LEN


# ---------------------------------------------------------------- plan (pure)


def render(
    max_caplen: int = max_caplen_for_chunk(2048),
    filter_c: str | None = None,
    pin_dir: str | os.PathLike | None = None,
    extra_cflags: tuple[str, ...] | list[str] = (),
) -> tuple[str, list[str]]:
    """The program source and compile flags for these parameters. Pure."""
    if not isinstance(max_caplen, int) or not 64 <= max_caplen <= 65535:
        raise StenoError(f"max_caplen {max_caplen!r} is out of range: it must be 64..65535 bytes")
    src = PROGRAM_FILE.read_text()
    if filter_c and "SXDP_FILTER_DEFINED" not in filter_c:
        raise StenoError("the capture filter's C text must #define SXDP_FILTER_DEFINED and define sxdp_filter()")
    if filter_c:
        src = "/* ---- capture filter ---- */\n" + filter_c.rstrip() + "\n/* ---- capture program ---- */\n" + src
    cflags = [f"-I{BPF_DIR}", f"-DSXDP_MAX_CAPLEN={max_caplen}"]
    if pin_dir is not None:
        pd = os.fspath(pin_dir)
        for name in PIN_NAMES:
            path = os.path.join(pd, name)
            if '"' in path or "\\" in path:
                raise StenoError(f"pin directory {pd!r} contains a quote or backslash; choose a plain path under /sys/fs/bpf")
            cflags.append(f'-DSXDP_PIN_{name.upper()}="{path}"')
    cflags.extend(extra_cflags)
    return src, cflags


def split_test_output(out: bytes, meta_len: int = layout.META_LEN):
    """(meta record as a numpy void of META_DTYPE, frame bytes) from test_run output."""
    import numpy as np

    if len(out) < meta_len:
        raise ValueError(f"test-run output is {len(out)} bytes, shorter than the metadata")
    meta = np.frombuffer(out[:meta_len], dtype=layout.META_DTYPE)[0]
    return meta, out[meta_len:]


# ---------------------------------------------------------------- apply (thin)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_bpf = 321
BPF_PROG_TEST_RUN = 10


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _XdpMd(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def _capture_fd2():
    """Collect what libbcc/clang print on fd 2 (compile errors, verifier log).
    fd 2 is process-wide: one capture at a time (other threads' stderr output
    during a compile lands in the log too)."""
    log = {"text": ""}
    with _FD2_LOCK, tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log["text"] = tmp.read().decode(errors="replace")


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if " error: " in line or line.startswith("error:"):
            line = re.sub(r"^/virtual/main\.c:", "program:", line.strip())
            return line[:300]
    return ""


def _verifier_summary(log: str) -> str:
    m = re.search(r"processed (\d+) insns \(limit (\d+)\)", log)
    if m and int(m.group(1)) >= int(m.group(2)):
        return (f"the program is too complex to verify ({m.group(1)} instructions explored, limit {m.group(2)}); "
                "simplify the capture filter")
    if "Argument list too long" in log or "Program  too large" in log:
        return "the program is too complex to verify (E2BIG); simplify the capture filter"
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    # the verifier's complaint is the last line that is not the "processed N insns" stats
    for ln in reversed(lines):
        if ln.startswith(("processed ", "verification time", "stack depth", "bpf: Failed", "HINT")):
            continue
        return ln[:300]
    return "the verifier rejected the program"


class LoadedProgram:
    """The capture program, loaded. Keeps the bcc module alive."""

    def __init__(self, bpf, fn, source: str, cflags: list[str], pin_dir: str | None):
        self._bpf = bpf
        self._fn = fn
        self.source = source
        self.cflags = cflags
        self.pin_dir = pin_dir
        self._attached: dict[str, int] = {}

    @property
    def fd(self) -> int:
        return self._fn.fd

    @property
    def prog_id(self) -> int:
        """The kernel's id of this program (as `ip link` / bpftool show it)."""
        return obj_id(self.fd)

    @property
    def xsks_map_fd(self) -> int:
        return self._bpf[b"xsks"].map_fd

    @property
    def clock_map_fd(self) -> int:
        return self._bpf[b"clock"].map_fd

    def attach(self, ifname: str, mode: str = "native") -> None:
        """Attach to ``ifname`` (replaces an XDP program already there atomically)."""
        flags = MODES.get(mode)
        if flags is None:
            raise StenoError(f"unknown XDP mode {mode!r}; use one of: native, skb")
        with _capture_fd2() as log:
            try:
                self._bpf.attach_xdp(ifname.encode(), self._fn, flags)
            except Exception as e:  # bcc raises bare Exception
                err = e
            else:
                err = None
        if err is not None:
            raise InterfaceError(
                f"cannot attach the XDP program to {ifname} in {mode} mode: {err}; "
                "check the interface exists and supports XDP (try mode skb)",
                detail=log["text"],
            )
        self._attached[ifname] = flags

    def detach(self, ifname: str) -> None:
        flags = self._attached.pop(ifname, XDP_FLAGS_DRV_MODE)
        from bcc import BPF

        with _capture_fd2():
            try:
                BPF.remove_xdp(ifname.encode(), flags)
            except Exception as e:
                raise InterfaceError(f"cannot detach the XDP program from {ifname}: {e}") from None

    def counters(self) -> dict[str, int]:
        """Counter name -> value summed over CPUs."""
        t = self._bpf[b"counters"]
        out = {}
        for i, name in enumerate(layout.COUNTER_NAMES):
            vals = t[ctypes.c_int(i)]
            out[name] = int(sum(int(v) for v in vals))
        return out

    def set_clock_offset(self, ns: int) -> None:
        self._bpf[b"clock"][ctypes.c_int(0)] = ctypes.c_uint64(ns & 0xFFFFFFFFFFFFFFFF)

    def clock_offset(self) -> int:
        v = int(self._bpf[b"clock"][ctypes.c_int(0)].value)
        return v - (1 << 64) if v >= 1 << 63 else v

    def sync_clock(self) -> int:
        """Store CLOCK_REALTIME - CLOCK_MONOTONIC (ns) in the clock map; returns it."""
        off = clock_offset_now()
        self.set_clock_offset(off)
        return off

    def test_run(self, frame: bytes, repeat: int = 1) -> tuple[int, bytes]:
        """Run the program once on ``frame`` (BPF_PROG_TEST_RUN). Returns (XDP
        return code, output bytes = metadata + frame, see the module doc)."""
        return test_run_fd(self.fd, frame, repeat=repeat)

    def handover(self) -> None:
        """Forget the interfaces this program was attached to, without detaching:
        another program has replaced it there (an atomic XDP replace), and
        close() must not take that one off."""
        self._attached.clear()

    def close(self) -> None:
        for ifname in list(self._attached):
            with contextlib.suppress(StenoError):
                self.detach(ifname)
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def remove_pins(pin_dir: str | os.PathLike) -> list[str]:
    """Unpin the shared maps (xsks, clock) in ``pin_dir`` and remove the
    directory if it is then empty. The maps live on while a loaded program
    still uses them. Returns the paths removed."""
    pd = os.fspath(pin_dir)
    removed = []
    for name in PIN_NAMES:
        path = os.path.join(pd, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    with contextlib.suppress(OSError):
        os.rmdir(pd)
    return removed


def clock_offset_now() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in ns (taken as close together as possible)."""
    best = None
    for _ in range(3):
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        cand = (m1 - m0, r - (m0 + m1) // 2)
        if best is None or cand[0] < best[0]:
            best = cand
    return best[1]


BPF_OBJ_GET_INFO_BY_FD = 15


def obj_id(fd: int) -> int:
    """The id of a BPF program or map fd (bpf_prog_info.id / bpf_map_info.id:
    both are the second u32 of the info struct)."""
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, 256, ctypes.addressof(info)), 16)
    if _libc.syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:
        e = ctypes.get_errno()
        raise StenoError(f"cannot read BPF object info for fd {fd}: {os.strerror(e)}")
    return struct.unpack_from("<I", info.raw, 4)[0]


def test_run_fd(prog_fd: int, frame: bytes, repeat: int = 1) -> tuple[int, bytes]:
    frame = bytes(frame)
    inbuf = ctypes.create_string_buffer(frame, len(frame))
    out_cap = len(frame) + XDP_PACKET_HEADROOM + 4096
    outbuf = ctypes.create_string_buffer(out_cap)
    attr = _TestRunAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(frame)
    attr.data_size_out = out_cap
    attr.data_in = ctypes.addressof(inbuf)
    attr.data_out = ctypes.addressof(outbuf)
    attr.repeat = repeat
    r = _libc.syscall(SYS_bpf, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if r != 0:
        e = ctypes.get_errno()
        raise StenoError(f"BPF_PROG_TEST_RUN failed: {os.strerror(e)} (frame of {len(frame)} bytes)")
    return int(attr.retval), outbuf.raw[: attr.data_size_out]


def load(
    max_caplen: int = max_caplen_for_chunk(2048),
    filter_c: str | None = None,
    pin_dir: str | os.PathLike | None = None,
    extra_cflags: tuple[str, ...] | list[str] = (),
) -> LoadedProgram:
    """Compile and load the capture program. Raises BpfCompileError (clang
    failed; detail = the compiler log), VerifierError (the kernel refused it;
    detail = the verifier log), NeedRootError."""
    src, cflags = render(max_caplen=max_caplen, filter_c=filter_c, pin_dir=pin_dir, extra_cflags=extra_cflags)
    if os.geteuid() != 0:
        raise NeedRootError("loading the XDP program needs root (CAP_BPF and CAP_NET_ADMIN); run as root")
    try:
        from bcc import BPF
    except ImportError:
        raise StenoError("bcc is not importable; run `make setup` (Debian package python3-bpfcc)") from None
    if pin_dir is not None:
        pd = os.fspath(pin_dir)
        if not os.path.realpath(pd).startswith("/sys/fs/bpf"):
            raise StenoError(f"pin directory {pd} is not under /sys/fs/bpf (the BPF file system)")
        os.makedirs(pd, exist_ok=True)
    with _capture_fd2() as log:
        try:
            b = BPF(text=src.encode(), cflags=cflags)
        except Exception as e:
            b, err = None, e
        else:
            err = None
    if b is None:
        text = log["text"]
        if "Unable to find kernel headers" in text:
            raise BpfCompileError(
                "bcc cannot find kernel headers for the running kernel; run `make setup` "
                "(it links /lib/modules/$(uname -r)/build and source to the Debian headers)",
                detail=text,
            )
        first = _first_error(text)
        msg = "the XDP program does not compile"
        if first:
            msg += f": {first}"
        elif err is not None:
            msg += f": {err}"
        raise BpfCompileError(msg, detail=text or str(err))
    with _capture_fd2() as log:
        try:
            fn = b.load_func(FUNC_NAME.encode(), BPF.XDP)
        except Exception as e:
            fn, err = None, e
        else:
            err = None
    if fn is None:
        text = log["text"]
        b.cleanup()
        if "Permission denied" in str(err) or "Invalid argument" in str(err) or text:
            raise VerifierError(
                f"the kernel verifier rejected the XDP program: {_verifier_summary(text)}", detail=text or str(err)
            )
        raise StenoError(f"cannot load the XDP program: {err}", detail=text)
    return LoadedProgram(b, fn, src, cflags, os.fspath(pin_dir) if pin_dir is not None else None)

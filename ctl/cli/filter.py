"""stenoctl filter compile / filter test, and stenoctl bpf show.

Thin commands over stenoxdp.cbpf (compile, hex form, translation) and
stenoxdp.bpfprog (render/load of the XDP capture program). `filter test` runs
the real capture program, with the filter compiled in, on every packet of a
capture file through BPF_PROG_TEST_RUN and writes the packets it would
capture, byte for byte (records copied verbatim, same pcap/pcapng flavour).
"""
from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import typer

from ..errors import FilterError, StenoError, UsageError

LINKTYPE_ETHERNET = 1
# BPF_PROG_TEST_RUN for XDP takes frames of ETH_HLEN .. a page minus
# headroom and skb_shared_info (3520 bytes with 4 KiB pages)
TEST_RUN_MIN = 14
# The capture program is not multi-buffer aware: on a real interface it never
# sees a frame longer than one buffer; test-run would hand it only the first
# TEST_RUN_MAX bytes of a longer one, so those are skipped, not guessed.
TEST_RUN_MAX = 3520


# ---- capture files: records kept as raw bytes, so output is byte-identical ----

class CaptureReader:
    """Iterate a pcap or pcapng file as (raw_record_bytes, frame, linktype,
    is_packet). Non-packet pcapng blocks come through with is_packet False so
    a writer can keep them. `header` is the pcap file header (pcap only)."""

    def __init__(self, f: BinaryIO, name: str):
        self.f, self.name = f, name
        head = f.read(4)
        if len(head) < 4:
            raise UsageError(f"{name}: empty or truncated capture file")
        self.header = b""
        self.kind = None
        if head in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            self.kind, self.endian = "pcap", "<"
        elif head in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            self.kind, self.endian = "pcap", ">"
        elif head == b"\x0a\x0d\x0d\x0a":
            self.kind = "pcapng"
        else:
            raise UsageError(f"{name}: not a pcap or pcapng file (magic {head.hex()})")
        if self.kind == "pcap":
            rest = f.read(20)
            if len(rest) < 20:
                raise UsageError(f"{name}: truncated pcap file header")
            self.header = head + rest
            self.linktype = struct.unpack(self.endian + "I", rest[16:20])[0] & 0x0FFFFFFF
        self._first = head

    def __iter__(self) -> Iterator[tuple[bytes, bytes, int, bool]]:
        return self._pcap() if self.kind == "pcap" else self._pcapng()

    def _pcap(self):
        e, f = self.endian, self.f
        while True:
            rh = f.read(16)
            if not rh:
                return
            if len(rh) < 16:
                raise UsageError(f"{self.name}: truncated packet record header")
            incl = struct.unpack(e + "I", rh[8:12])[0]
            if incl > 0x10000000:
                raise UsageError(f"{self.name}: corrupt packet record (length {incl})")
            data = f.read(incl)
            if len(data) < incl:
                raise UsageError(f"{self.name}: truncated packet data")
            yield rh + data, data, self.linktype, True

    def _pcapng(self):
        f = self.f
        first, e, links = self._first, "<", []
        while True:
            bt = first if first is not None else f.read(4)
            first = None
            if not bt:
                return
            hdr = f.read(4)
            if len(bt) < 4 or len(hdr) < 4:
                raise UsageError(f"{self.name}: truncated pcapng block")
            if bt == b"\x0a\x0d\x0d\x0a":
                bom = f.read(4)
                e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                blen = struct.unpack(e + "I", hdr)[0]
                body = bom + f.read(blen - 12)
                links = []
            else:
                blen = struct.unpack(e + "I", hdr)[0]
                body = f.read(blen - 8)
            if blen < 12 or len(body) != blen - 8:
                raise UsageError(f"{self.name}: truncated or corrupt pcapng block")
            raw = bt + hdr + body
            btype = struct.unpack(e + "I", bt)[0]
            if btype == 1:                       # interface description
                links.append(struct.unpack(e + "H", body[:2])[0])
                yield raw, b"", 0, False
            elif btype == 6:                     # enhanced packet
                ifid, _, _, cap, _ = struct.unpack(e + "IIIII", body[:20])
                yield raw, body[20:20 + cap], links[ifid] if ifid < len(links) else -1, True
            elif btype == 3:                     # simple packet
                wl = struct.unpack(e + "I", body[:4])[0]
                yield raw, body[4:4 + min(wl, blen - 16)], links[0] if links else -1, True
            elif btype == 2:                     # obsolete packet block
                ifid = struct.unpack(e + "H", body[:2])[0]
                cap = struct.unpack(e + "I", body[12:16])[0]
                yield raw, body[20:20 + cap], links[ifid] if ifid < len(links) else -1, True
            else:
                yield raw, b"", 0, False


def _filter_from(expr: Optional[str], hexform: Optional[str]):
    from .. import cbpf

    f = cbpf.Filter.from_args(expr, hexform)
    if f is None:
        raise UsageError("give a filter: an expression, or --filter-hex HEX")
    return f


def run_filter_test(flt, infile: Path, outfile: Path | None, max_caplen: int | None = None) -> dict:
    """Run the capture program with `flt` on every packet of `infile`; write
    the captured ones to `outfile`. Returns counts."""
    from .. import bpfprog

    kw = {} if max_caplen is None else {"max_caplen": max_caplen}
    prog = bpfprog.load(filter_c=flt.c_source(), **kw)
    stats = {"packets": 0, "captured": 0, "filtered": 0, "skipped": 0}
    try:
        before = prog.counters().get("filtered", 0)
        try:
            fin = open(infile, "rb")
        except OSError as e:
            raise UsageError(f"cannot read {infile}: {e.strerror}") from None
        out = None
        try:
            rd = CaptureReader(fin, str(infile))
            if rd.kind == "pcap" and rd.linktype != LINKTYPE_ETHERNET:
                raise UsageError(f"{infile}: link type {rd.linktype} is not Ethernet; capture filters run on Ethernet frames")
            if outfile is not None:
                out = sys.stdout.buffer if str(outfile) == "-" else open(outfile, "wb")
                out.write(rd.header)
            for raw, frame, linktype, is_packet in rd:
                if not is_packet:
                    if out is not None:
                        out.write(raw)
                    continue
                stats["packets"] += 1
                if linktype != LINKTYPE_ETHERNET or not TEST_RUN_MIN <= len(frame) <= TEST_RUN_MAX:
                    stats["skipped"] += 1
                    continue
                rc, data = prog.test_run(frame)
                # filtered: XDP_PASS with the frame untouched; captured: the
                # program reserved metadata in front (and would redirect).
                captured = not (rc == bpfprog.XDP_PASS and data == frame)
                if captured:
                    stats["captured"] += 1
                    if out is not None:
                        out.write(raw)
                else:
                    stats["filtered"] += 1
        finally:
            fin.close()
            if out is not None and out is not sys.stdout.buffer:
                out.close()
            elif out is not None:
                out.flush()
        fc = prog.counters().get("filtered", 0) - before
        if fc != stats["filtered"]:
            raise StenoError(f"internal: the program counted {fc} frames filtered, the output {stats['filtered']}")
    finally:
        prog.close()
    return stats


def register(app: typer.Typer) -> None:
    fapp = typer.Typer(help="Capture filters: compile a pcap-filter expression, try it on a capture file.",
                       no_args_is_help=True)
    app.add_typer(fapp, name="filter")
    bapp = typer.Typer(help="The XDP capture program.", no_args_is_help=True)
    app.add_typer(bapp, name="bpf")

    @fapp.command("set", help="Change the filter of a running capture, without losing or duplicating a frame "
                  "and without restarting the writers.\n\n"
                  "Examples: stenoctl filter set --iface ens5f1 'not port 443'\n\n"
                  "          stenoctl filter set --iface ens5f1 --none")
    def set_(
        expr: Optional[str] = typer.Argument(None, help="pcap-filter expression."),
        iface: str = typer.Option(..., "--iface", "-i", help="Interface of the running capture."),
        filter_hex: Optional[str] = typer.Option(None, "--filter-hex", help="Stenographer-style hex filter."),
        none: bool = typer.Option(False, "--none", help="Remove the filter (capture every frame)."),
        status_dir: Path = typer.Option(Path(os.environ.get("STENOXDP_STATUS_DIR", "/run/stenoxdp")), "--status-dir"),
        timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the capture to answer."),
    ) -> None:
        import json
        import secrets
        import time

        from .capture import read_status

        if sum(bool(x) for x in (expr, filter_hex, none)) != 1:
            raise UsageError("give exactly one of EXPR, --filter-hex HEX or --none")
        _filter_from(expr, filter_hex) if not none else None  # a bad filter fails here, before the daemon sees it
        owner = [d for d in read_status(status_dir) if any(i.get("name") == iface for i in d.get("ifaces", []))]
        if not owner:
            raise StenoError(f"no running capture on {iface} (status directory {status_dir})")
        pid = owner[0]["pid"]
        req = status_dir / f"{pid}-{iface}.filter-request"
        res = status_dir / f"{pid}-{iface}.filter-result"
        rid = secrets.token_hex(8)
        res.unlink(missing_ok=True)
        tmp = req.with_name("." + req.name + ".tmp")
        tmp.write_text(json.dumps({"id": rid, "filter": expr, "filter_hex": filter_hex}))
        os.replace(tmp, req)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                doc = json.loads(res.read_text())
            except (OSError, ValueError):
                time.sleep(0.1)
                continue
            if doc.get("id") == rid:
                if not doc.get("ok"):
                    raise StenoError(f"filter not changed: {doc.get('message')}")
                print(doc.get("message"))
                return
            time.sleep(0.1)
        raise StenoError(f"the capture on {iface} did not answer within {timeout:.0f}s; the filter is unchanged "
                         f"unless it answers later (see stenoctl status)")

    @fapp.command("compile", help="Compile a pcap-filter expression (or check a hex filter) and print the classic "
                  "BPF like `tcpdump -d`, then the hex form `stenotype --filter` and `--filter-hex` take.\n\n"
                  "Examples: stenoctl filter compile 'not port 22 and (tcp or udp)'\n\n"
                  "          stenoctl filter compile --filter-hex 002800000000000c...")
    def compile_cmd(
        expr: Optional[str] = typer.Argument(None, help="pcap-filter expression, as tcpdump takes it."),
        filter_hex: Optional[str] = typer.Option(None, "--filter-hex", help="A Stenographer hex filter to check."),
        show_c: bool = typer.Option(False, "--c", help="Also print the C it becomes in the XDP program."),
        ddd: bool = typer.Option(False, "--ddd", help="Print the instructions as `tcpdump -ddd` (decimal) instead."),
    ) -> None:
        from .. import cbpf

        f = _filter_from(expr, filter_hex)
        f.c_source()      # translate now: anything untranslatable fails here
        if ddd:
            print(cbpf.ddd(f.insns))
        else:
            print(f.disassemble())
        print(f"hex: {f.hex}")
        if show_c:
            print(f.c_source(), end="")

    @fapp.command("test", help="Run the XDP capture program with this filter on every packet of a pcap/pcapng "
                  "file (BPF_PROG_TEST_RUN; no interface needed; root) and write the packets it would capture, "
                  "bytes and timestamps unchanged.\n\n"
                  "Example: stenoctl filter test 'udp and not port 53' in.pcap -w kept.pcap")
    def test_cmd(
        expr: Optional[str] = typer.Argument(None, help="pcap-filter expression (or use --filter-hex)."),
        infile: Optional[Path] = typer.Argument(None, help="Input pcap or pcapng file (Ethernet)."),
        write: Optional[Path] = typer.Option(None, "--write", "-w", help="Write captured packets here ('-' = stdout)."),
        filter_hex: Optional[str] = typer.Option(None, "--filter-hex", help="A Stenographer hex filter."),
    ) -> None:
        if filter_hex and infile is None and expr:
            expr, infile = None, Path(expr)       # `filter test --filter-hex HEX in.pcap`
        if infile is None:
            raise UsageError("give the capture file to read: stenoctl filter test 'EXPR' IN.pcap -w OUT.pcap")
        f = _filter_from(expr, filter_hex)
        if not infile.exists():
            raise UsageError(f"{infile}: no such file")
        st = run_filter_test(f, infile, write)
        msg = (f"{st['packets']} packets: {st['captured']} captured, {st['filtered']} filtered out"
               + (f", {st['skipped']} skipped (not Ethernet, or shorter than 14 bytes / longer "
                  f"than {TEST_RUN_MAX}: the XDP program cannot see them whole; they are not written)" if st["skipped"] else ""))
        print(msg, file=sys.stderr if write is not None and str(write) == "-" else sys.stdout)

    @bapp.command("show", help="Print the exact C source and compile flags the loader uses (with the filter "
                  "compiled in, if given).\n\nExample: stenoctl bpf show --filter 'not port 22'")
    def show_cmd(
        filter: Optional[str] = typer.Option(None, "--filter", help="pcap-filter expression."),
        filter_hex: Optional[str] = typer.Option(None, "--filter-hex", help="A Stenographer hex filter."),
        max_caplen: Optional[int] = typer.Option(None, "--max-caplen", help="Longest frame kept whole."),
        flags_only: bool = typer.Option(False, "--flags", help="Print only the compile flags."),
    ) -> None:
        from .. import bpfprog, cbpf

        f = cbpf.Filter.from_args(filter, filter_hex)
        kw = {} if max_caplen is None else {"max_caplen": max_caplen}
        src, cflags = bpfprog.render(filter_c=f.c_source() if f else None, **kw)
        print("// cflags: " + " ".join(cflags))
        if not flags_only:
            print(src, end="" if src.endswith("\n") else "\n")


__all__ = ["register", "CaptureReader", "run_filter_test", "FilterError"]

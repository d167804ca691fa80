"""Capture filters without the kernel: libpcap compile, Stenographer hex form,
validation, `tcpdump -d` disassembly, and the generated C -- compiled for the
host with the system C compiler and checked against libpcap's interpreter
(pcap_offline_filter) on random frames. Real tcpdump is the reference for the
text forms."""
from __future__ import annotations

import ctypes
import random
import shutil
import struct
import subprocess
import sys

import pytest

from stenoxdp import cbpf
from stenoxdp.cbpf import Insn
from stenoxdp.errors import FilterError

EXPRS = [
    "tcp port 80", "not port 22 and (tcp or udp)", "vlan 100 and host 198.18.0.1", "ether proto 0x88cc",
    "ip6 and ip6[40+13] & 2 != 0", "tcp[tcpflags] & tcp-syn != 0", "mpls 100 and udp", "pppoes and ip",
    "geneve and ip", "ip[2:2] - ((ip[0]&0xf)<<2) > 40", "len > 100 and ip[1] / ip[2] = 3",
    "udp[8:4] % 7 = 2 or ip[0] << ip[1] = 4 or -ip[2] = 9 or ip[3]^5=1 or ip[5]*3=6 or ip[6]>>ip[7]=0",
    "not (" + " or ".join(f"port {p}" for p in range(1000, 1030)) + ")", "net 198.18.0.0/15", "arp", "less 64",
    "ether[len - 1] & 1 = 1", "tcp[((tcp[12] & 0xf0) >> 2):4] = 0x47455420", "vlan and vlan 20 and ip6",
]

# Security Onion's documented stenotype --filter value (issue #129 of
# Security-Onion-Solutions/securityonion), made with Stenographer's tools.
SO_HEX = ("002800000000000c00150008000086dd0030000000000014001502000000008400150100000000060015001100000011"
          "002800000000003600150e00000001bb002800000000003800150c0d000001bb0015000c00000800003000000000001700"
          "150200000000840015010000000006001500080000001100280000000000140045060000001fff00b100000000000e0048"
          "00000000000e00150200000001bb004800000000001000150001000001bb00060000000000000006000000040000")


@pytest.fixture(scope="module")
def empty_pcap(tmp_path_factory):
    p = tmp_path_factory.mktemp("cbpf") / "empty.pcap"
    p.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, cbpf.SNAPLEN, 1))
    return p


def _tcpdump(args, empty_pcap):
    if not shutil.which("tcpdump"):
        pytest.skip("tcpdump is not installed (make setup)")
    r = subprocess.run(["tcpdump", "-r", str(empty_pcap)] + args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("expr", EXPRS)
def test_compile_and_disassembly_match_tcpdump(expr, empty_pcap):
    ins = cbpf.compile_expr(expr)
    ddd = _tcpdump(["-ddd", expr], empty_pcap)
    assert cbpf.ddd(ins) == ddd.strip()
    assert cbpf.disassemble(ins) == _tcpdump(["-d", expr], empty_pcap).rstrip("\n")
    assert cbpf.disassemble(ins).splitlines() == cbpf.pcap_image(ins)


def test_hex_form_is_what_stenotype_parses():
    ins = cbpf.compile_expr("tcp port 80")
    h = cbpf.to_hex(ins)
    assert len(h) == 16 * len(ins)
    assert h.startswith("002800000000000c")     # ldh [12]: %04x code %02x jt %02x jf %08x k
    assert cbpf.parse_hex(h) == ins
    assert cbpf.parse_hex(h.upper()) == ins
    assert cbpf.parse_hex(" ".join(h[i:i + 16] for i in range(0, len(h), 16))) == ins
    assert cbpf.parse_hex("--filter=" + h) == ins
    # Stenographer's compile_bpf.sh prints `tcpdump -ddd` numbers as space-separated %x
    sh = " ".join(f"{v:x}" for i in ins for v in (i.code, i.jt, i.jf, i.k))
    assert cbpf.parse_hex(sh) == ins


def test_security_onion_example_parses():
    ins = cbpf.parse_hex(SO_HEX)
    text = cbpf.disassemble(ins)
    assert "(000) ldh      [12]" in text and "#0x1bb" in text
    assert cbpf.to_hex(ins) == SO_HEX
    cbpf.filter_c(ins)


@pytest.mark.parametrize("bad,msg", [
    ("", "empty filter hex"),
    ("0028000000", "not a multiple of 16"),
    ("002800000000000z", "not a hex digit"),
    ("1 2 3", "whole number of instructions"),
    ("28 0 0 xyz", "not a hex number"),
    ("002800000000000c", "does not end in ret"),
    ("00ff000000000000" "0006000000000000", "unknown or unsupported"),
    ("0015050000000800" "0006000000000000", "past the end"),
    ("0005000000000001" "0006000000000000", "past the end"),
    ("0060000000000010" "0016000000000000", "scratch memory index 16"),
    ("0034000000000000" "0016000000000000", "division by constant zero"),
    ("00050000fffffffe" "0006000000000000", "backward jump"),
    ("0060000000000000" "0016000000000000", "reads scratch memory M[0] before"),
    ("00300000fffff004" "0016000000000000", "socket metadata"),
    ("0005000000000000" "0006000000000000", None),
    ("0028000000000000" "0006000000000000", None),
])
def test_bad_hex_is_a_clear_error(bad, msg):
    if msg is None:
        cbpf.parse_hex(bad)
        return
    with pytest.raises(FilterError) as ei:
        cbpf.parse_hex(bad)
    assert msg in str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("expr,msg", [
    ("udp port", "syntax error"),
    ("host 198.18.0.300", "bad filter expression"),
    ("", "empty filter expression"),
    ("ip6 protochain 17", "backward jump"),
    ("inbound", "socket metadata"),
    ("geneve or port 53", "before any path stores it"),
    ("ip6 and tcp[13] = 2", "rejects all packets"),
])
def test_bad_expressions_are_clear_errors(expr, msg):
    with pytest.raises(FilterError) as ei:
        cbpf.compile_expr(expr)
    assert msg in str(ei.value)
    assert "\n" not in str(ei.value)


def test_validate_limits():
    with pytest.raises(FilterError, match="empty"):
        cbpf.validate([])
    too_long = [Insn(cbpf.LD | cbpf.W | cbpf.IMM, 0, 0, 1)] * cbpf.MAXINSNS + [Insn(cbpf.RET | cbpf.K, 0, 0, 1)]
    with pytest.raises(FilterError, match="limit is 4096"):
        cbpf.validate(too_long)
    with pytest.raises(FilterError, match="shift by constant"):
        cbpf.validate([Insn(cbpf.ALU | cbpf.LSH | cbpf.K, 0, 0, 32), Insn(cbpf.RET | cbpf.K, 0, 0, 1)])
    with pytest.raises(FilterError, match="unknown"):
        cbpf.validate([Insn(cbpf.RET | cbpf.X, 0, 0, 0)])


def test_filter_c_is_the_contract():
    src = cbpf.Filter.from_expr("udp").c_source()
    assert "#define SXDP_FILTER_DEFINED 1" in src
    assert "static __always_inline int sxdp_filter(void *data, void *data_end, __u32 wirelen)" in src
    assert src.startswith("/* capture filter: udp */")
    assert cbpf.Filter.from_expr("udp").c_source() == src      # deterministic
    f = cbpf.Filter.from_hex(cbpf.Filter.from_expr("udp").hex)
    assert f.insns == cbpf.compile_expr("udp")
    assert cbpf.Filter.from_args(None, None) is None
    with pytest.raises(FilterError, match="not both"):
        cbpf.Filter.from_args("udp", f.hex)
    # a comment cannot be closed early by the expression text
    assert "*/" not in cbpf.filter_c(cbpf.compile_expr("udp"), "udp */ x").split("\n")[0][:-3]


# ---- the generated C, compiled for the host, against libpcap ---------------------

HOST_PRELUDE = """
#include <stdint.h>
typedef uint8_t __u8; typedef uint32_t __u32; typedef uint64_t __u64;
#define __always_inline inline __attribute__((always_inline))
"""


def _frames(n, seed=3):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        et = r.choice([b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\x47", b"\x88\x64", b"\x08\x06"])
        body = bytes(r.randrange(256) for _ in range(r.randrange(0, 120)))
        if et == b"\x08\x00" and body:
            body = bytes([r.choice([0x45, 0x46, 0x4f, 0x44])]) + body[1:]
        if len(body) > 9 and r.random() < 0.6:
            body = body[:9] + bytes([r.choice([6, 17, 1, 132])]) + body[10:]
        out.append(r.choice([b"\xff" * 6, b"\x02" * 6]) + b"\x02" * 6 + et + body)
    return out


def test_generated_c_matches_libpcap_on_the_host(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler (make setup installs clang)")
    exprs = EXPRS + ["udp port 53", "ip[0] & 0xf > 5", "ip[6:2] & 0x1fff != 0", "ether broadcast",
                     "ip[1] % ip[3] = 1", "ip[0] >> ip[2] = 1", "ether[20:4] & 0xff00ff00 = 0x1000200"]
    progs = [cbpf.compile_expr(e) for e in exprs]
    parts = [HOST_PRELUDE, cbpf.C_PRELUDE]
    for n, p in enumerate(progs):
        parts.append(cbpf.to_c(p, f"f{n}"))
    parts.append("int run(int n, const unsigned char *d, unsigned len) {\n  void *b = (void *)d, *e = (void *)(d + len);\n  switch (n) {\n")
    parts += [f"  case {n}: return f{n}(b, e, len);\n" for n in range(len(progs))]
    parts.append("  }\n  return -1;\n}\n")
    src = tmp_path / "filters.c"
    src.write_text("".join(parts))
    so = tmp_path / "filters.so"
    r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-Wno-unused-label", "-o", str(so), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lib = ctypes.CDLL(str(so))
    lib.run.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    frames = _frames(1500)
    bad = []
    for n, p in enumerate(progs):
        ref = cbpf.PcapMatcher(p)
        for fr in frames:
            if (lib.run(n, fr, len(fr)) != 0) != (ref(fr) != 0):
                bad.append((exprs[n], fr.hex()))
    assert not bad, bad[:3]


# ---- the CLI (no root needed for compile / show) ----------------------------------

def _stenoctl(*args):
    return subprocess.run([sys.executable, "-m", "stenoxdp", *args], capture_output=True, text=True)


def test_cli_compile_prints_disassembly_and_hex(empty_pcap):
    r = _stenoctl("filter", "compile", "udp port 53")
    assert r.returncode == 0, r.stderr
    ins = cbpf.compile_expr("udp port 53")
    assert cbpf.disassemble(ins) in r.stdout
    assert f"hex: {cbpf.to_hex(ins)}" in r.stdout
    r2 = _stenoctl("filter", "compile", "--filter-hex", cbpf.to_hex(ins))
    assert r2.stdout == r.stdout


@pytest.mark.parametrize("args", [("filter", "compile", "udp port"), ("filter", "compile", "--filter-hex", "00zz"),
                                  ("filter", "compile", "ip6 protochain 6"), ("bpf", "show", "--filter", "port 99999")])
def test_cli_bad_filter_is_one_line_exit_2(args):
    r = _stenoctl(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("stenoctl: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_bpf_show_has_filter_and_flags():
    r = _stenoctl("bpf", "show", "--filter", "not port 22")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("// cflags: ")
    assert "-DSXDP_MAX_CAPLEN=" in r.stdout.splitlines()[0]
    assert "#define SXDP_FILTER_DEFINED 1" in r.stdout and "int sxdp_capture(" in r.stdout
    plain = _stenoctl("bpf", "show")
    assert "SXDP_FILTER_DEFINED 1" not in plain.stdout and "int sxdp_capture(" in plain.stdout


def test_capture_reader_pcap_and_pcapng(tmp_path):
    """The reader of `filter test`: records come back byte-for-byte from pcap
    (both timestamp precisions, both byte orders) and pcapng (made by editcap)."""
    import io

    from stenoxdp.cli.filter import CaptureReader

    frames = _frames(50)
    for magic, endian in ((0xA1B23C4D, "<"), (0xA1B2C3D4, "<"), (0xA1B2C3D4, ">")):
        head = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
        recs = [struct.pack(endian + "IIII", 100 + i, i, len(f), len(f) + 1) + f for i, f in enumerate(frames)]
        rd = CaptureReader(io.BytesIO(head + b"".join(recs)), "x")
        assert rd.kind == "pcap" and rd.header == head and rd.linktype == 1
        got = list(rd)
        assert [g[0] for g in got] == recs and [g[1] for g in got] == frames
        if endian == "<" and magic == 0xA1B2C3D4 and shutil.which("editcap"):
            src, ng = tmp_path / "a.pcap", tmp_path / "a.pcapng"
            src.write_bytes(head + b"".join(recs))
            subprocess.run(["editcap", "-F", "pcapng", str(src), str(ng)], check=True, capture_output=True)
            with open(ng, "rb") as f:
                items = list(CaptureReader(f, str(ng)))
            assert [it[1] for it in items if it[3]] == frames
            assert all(it[2] == 1 for it in items if it[3])
            assert b"".join(it[0] for it in items) == ng.read_bytes()
    from stenoxdp.errors import UsageError

    with pytest.raises(UsageError, match="not a pcap or pcapng"):
        CaptureReader(io.BytesIO(b"hello world"), "x")
    with pytest.raises(UsageError, match="truncated"):
        list(CaptureReader(io.BytesIO(head + recs[0][:20]), "x"))


def random_program(r: random.Random, n: int = 40) -> list[Insn]:
    """A random valid classic BPF program using every instruction kind (as a
    hand-written --filter-hex could): scratch slots are stored first, jumps go
    forward, it ends in ret."""
    I = Insn
    prog = [I(cbpf.LD | cbpf.W | cbpf.IMM, 0, 0, r.randrange(64))]
    prog += [I(cbpf.ST, 0, 0, m) for m in range(cbpf.MEMWORDS)]
    body_len = n
    for pc in range(len(prog), len(prog) + body_len):
        left = len(prog) + body_len - pc          # instructions after this one incl. the final rets
        k = r.random()
        size = r.choice([cbpf.W, cbpf.H, cbpf.B])
        off = r.choice([0, 1, 12, 13, 14, 20, 23, 30, 40, 54, 59, 60, 61, 62, 63] * 4 + [100, 1499, 0x7FFF, 0x8000, 0xFFFFFFFF])
        if k < 0.15:
            ins = I(cbpf.LD | size | cbpf.ABS, 0, 0, off if off < cbpf.SKF_AD_OFF else 70)
        elif k < 0.25:
            ins = I(cbpf.LD | size | cbpf.IND, 0, 0, r.choice([0, 2, 14, 40] * 4 + [0xFFFFFF00]))
        elif k < 0.3:
            ins = I(cbpf.LDX | cbpf.B | cbpf.MSH, 0, 0, r.choice([14, 15, 60] * 4 + [70, 0x9000]))
        elif k < 0.36:
            ins = r.choice([I(cbpf.LD | cbpf.W | cbpf.LEN, 0, 0, 0), I(cbpf.LDX | cbpf.W | cbpf.LEN, 0, 0, 0),
                            I(cbpf.LD | cbpf.W | cbpf.IMM, 0, 0, r.choice([r.randrange(64), r.randrange(1 << 32)])),
                            I(cbpf.LDX | cbpf.W | cbpf.IMM, 0, 0, r.choice([0, 1, 3, 31, 32, 33, 1 << 31] + [r.randrange(64)] * 6)),
                            I(cbpf.MISC | cbpf.TAX, 0, 0, 0), I(cbpf.MISC | cbpf.TXA, 0, 0, 0)])
        elif k < 0.44:
            m = r.randrange(cbpf.MEMWORDS)
            ins = r.choice([I(cbpf.ST, 0, 0, m), I(cbpf.STX, 0, 0, m), I(cbpf.LD | cbpf.W | cbpf.MEM, 0, 0, m),
                            I(cbpf.LDX | cbpf.W | cbpf.MEM, 0, 0, m)])
        elif k < 0.7:
            op = r.choice(list(cbpf._ALU_OPS) + [cbpf.NEG])
            if op == cbpf.NEG:
                ins = I(cbpf.ALU | cbpf.NEG, 0, 0, 0)
            elif r.random() < 0.5:
                ins = I(cbpf.ALU | op | cbpf.X, 0, 0, 0)
            else:
                kk = r.randrange(32) if op in (cbpf.LSH, cbpf.RSH) else r.choice([1, 2, 3, 7, 0xFF, 0x1000, r.randrange(1, 1 << 32)])
                ins = I(cbpf.ALU | op | cbpf.K, 0, 0, kk)
        elif k < 0.95 and left > 3:
            op = r.choice(list(cbpf._JMP_OPS) + [cbpf.JA])
            span = min(left - 2, 255)
            if op == cbpf.JA:
                ins = I(cbpf.JMP | cbpf.JA, 0, 0, r.randrange(span))
            else:
                ins = I(cbpf.JMP | op | r.choice([cbpf.K, cbpf.X]), r.randrange(span), r.randrange(span),
                        r.choice([0, 1, 0x800, 0x86DD, 6, 17, r.randrange(1 << 32)]))
        elif k < 0.97:
            ins = r.choice([I(cbpf.RET | cbpf.K, 0, 0, r.choice([0, 1, 262144])), I(cbpf.RET | cbpf.RET_A, 0, 0, 0)])
        else:
            ins = I(cbpf.ALU | cbpf.AND | cbpf.K, 0, 0, 0xFF)
        prog.append(ins)
    prog += [I(cbpf.RET | cbpf.RET_A, 0, 0, 0), I(cbpf.RET | cbpf.K, 0, 0, 0)]
    # jumps were drawn against the final length: clamp any that overshoot
    out = []
    for pc, i in enumerate(prog):
        if i.code & 0x07 == cbpf.JMP:
            lim = len(prog) - pc - 2
            if i.code == cbpf.JMP | cbpf.JA:
                i = Insn(i.code, 0, 0, min(i.k, lim))
            else:
                i = Insn(i.code, min(i.jt, lim), min(i.jf, lim), i.k)
        out.append(i)
    cbpf.validate(out)
    return out


def test_random_programs_match_libpcap_on_the_host(tmp_path):
    """Hand-written programs (what --filter-hex may carry) beyond what
    libpcap's compiler emits: every opcode, X-relative loads near and past the
    end, shifts by X >= 32, division by X == 0."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler (make setup installs clang)")
    r = random.Random(11)
    progs = [random_program(r) for _ in range(250)]
    parts = [HOST_PRELUDE, cbpf.C_PRELUDE] + [cbpf.to_c(p, f"f{n}") for n, p in enumerate(progs)]
    parts.append("int run(int n, const unsigned char *d, unsigned len) {\n  void *b = (void *)d, *e = (void *)(d + len);\n  switch (n) {\n")
    parts += [f"  case {n}: return f{n}(b, e, len);\n" for n in range(len(progs))]
    parts.append("  }\n  return -1;\n}\n")
    src, so = tmp_path / "rand.c", tmp_path / "rand.so"
    src.write_text("".join(parts))
    res = subprocess.run([cc, "-O0", "-shared", "-fPIC", "-Wno-unused-label", "-o", str(so), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    lib = ctypes.CDLL(str(so))
    lib.run.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    frames = _frames(300, seed=5) + [bytes(r.randrange(256) for _ in range(n)) for n in (14, 59, 60, 61, 64, 1500)]
    bad = []
    for n, p in enumerate(progs):
        ref = cbpf.PcapMatcher(p)
        for fr in frames:
            if (lib.run(n, fr, len(fr)) != 0) != (ref(fr) != 0):
                bad.append((n, fr.hex()))
    assert not bad, (len(bad), cbpf.disassemble(progs[bad[0][0]]), bad[0][1])
    split = sum(1 for p in progs if 0 < sum(cbpf.PcapMatcher(p)(fr) != 0 for fr in frames) < len(frames))
    assert split >= 30, f"only {split} random programs split the frames: the test says little"



def test_ancillary_vlan_loads_read_as_no_tag_in_metadata():
    """`tcpdump -ddd -i IFACE 'vlan 100'` on Linux (what Stenographer's
    compile_bpf.sh feeds stenotype) first asks the socket for an offloaded tag
    (SKF_AD_VLAN_TAG_PRESENT) and falls back to the tag in the frame. XDP sees
    the tag in the frame, so the translation answers "no offloaded tag"."""
    vlanp = cbpf.SKF_AD_OFF + cbpf.SKF_AD_VLAN_TAG_PRESENT
    prog = [Insn(cbpf.LD | cbpf.B | cbpf.ABS, 0, 0, vlanp), Insn(cbpf.JMP | cbpf.JEQ | cbpf.K, 0, 1, 1),
            Insn(cbpf.RET | cbpf.K, 0, 0, 0), Insn(cbpf.RET | cbpf.K, 0, 0, 1)]
    f = cbpf.Filter.from_hex(cbpf.to_hex(prog))
    assert "A = 0; /* ancillary vlanp" in f.c_source()
    with pytest.raises(FilterError, match="socket metadata"):
        cbpf.validate([Insn(cbpf.LD | cbpf.W | cbpf.ABS, 0, 0, cbpf.SKF_AD_OFF + 4), Insn(cbpf.RET | cbpf.K, 0, 0, 1)])

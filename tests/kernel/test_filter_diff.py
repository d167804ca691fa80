"""Differential test: capture filters translated to C and run in the kernel
(XDP, BPF_PROG_TEST_RUN) give the same verdict as libpcap's own interpreter
(pcap_offline_filter) on every packet of a varied corpus, for several hundred
expressions (a fixed list + random ones from a small grammar).

Speed: all filters of a batch are compiled by clang once (one bcc BPF() object
with one XDP entry point per filter, cbpf.harness_source) and each is loaded
(verified) on its own; then every frame is test-run through each program.
A second test runs a subset through the real capture program
(bpfprog.load(filter_c=...)).
"""
from __future__ import annotations

import ipaddress
import random
import struct
import time
from pathlib import Path

import pytest

from stenoxdp import cbpf
from stenoxdp.errors import FilterError

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
SEED = 6

MACS = [b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02",
        b"\x33\x33\x00\x00\x00\x01"]
V4 = ["198.18.0.1", "198.18.0.2", "198.19.7.9", "10.0.0.1", "224.0.0.251", "255.255.255.255", "198.18.200.3"]
V6 = ["2001:db8::1", "2001:db8::2", "2001:db8:1::53", "ff02::1", "fe80::1"]
PORTS = [22, 53, 80, 443, 1000, 1005, 2000, 2029, 4789, 6081, 8080, 65535, 0]
VIDS = [1, 10, 20, 30, 100, 4095]
LABELS = [16, 100, 200, 1048575]


def _ip4b(a):
    return ipaddress.IPv4Address(a).packed


def _ip6b(a):
    return ipaddress.IPv6Address(a).packed


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def port(self):
        return self.r.choice(PORTS) if self.r.random() < 0.8 else self.r.randrange(65536)

    def l4(self, proto):
        r = self.r
        pay = bytes(r.randrange(256) for _ in range(r.choice([0, 0, 4, 12, 40])))
        if proto == 6:
            doff = r.choice([5, 5, 8, 15, 2])
            flags = r.randrange(256)
            hdr = struct.pack("!HHIIBBHHH", self.port(), self.port(), r.randrange(1 << 32), 0,
                              doff << 4, flags, 1024, 0, 0) + bytes(max(0, 4 * doff - 20))
            return hdr + pay
        if proto == 17:
            dp = self.port()
            if dp in (4789, 6081) and r.random() < 0.7:     # vxlan / geneve with an inner frame
                inner = self.eth(depth=1)
                pay = (b"\x08\x00\x00\x00\x00\x00\x01\x00" if dp == 4789 else b"\x00\x00\x65\x58\x00\x00\x01\x00") + inner
            return struct.pack("!HHHH", self.port(), dp, 8 + len(pay), 0) + pay
        if proto in (1, 58):
            return bytes([r.choice([0, 8, 3, 11, 128, 129, 135]), r.randrange(4), 0, 0]) + pay
        return pay + bytes(r.randrange(256) for _ in range(8))

    def ipv4(self):
        r = self.r
        ihl = r.choice([5, 5, 5, 6, 15, 4])
        proto = r.choice([6, 6, 17, 17, 1, 132, 47, 50, 2, r.randrange(256)])
        frag = r.choice([0, 0, 0, 0x2000, 0x0010, 0x2020, 0x4000])
        src, dst = _ip4b(r.choice(V4)), _ip4b(r.choice(V4))
        opts = bytes(r.randrange(256) for _ in range(max(0, 4 * ihl - 20)))
        l4 = self.l4(proto)
        tot = 20 + len(opts) + len(l4)
        return struct.pack("!BBHHHBBH4s4s", (r.choice([4, 4, 4, 6]) << 4) | ihl, r.randrange(256), tot, 7,
                           frag, 64, proto, 0, src, dst) + opts + l4

    def ipv6(self):
        r = self.r
        chain, nh = [], None
        for _ in range(r.choice([0, 0, 1, 2, 3])):
            chain.append(r.choice([0, 43, 60, 44]))
        final = r.choice([6, 17, 58, 6, 17, 132, 59])
        body = self.l4(final) if final != 59 else b""
        nxt = final
        for h in reversed(chain):
            if h == 44:
                hdr = struct.pack("!BBHI", nxt, 0, r.choice([0, 1, 0x100]), 1)
            else:
                n = r.choice([0, 1])
                hdr = bytes([nxt, n]) + bytes(6 + 8 * n)
            body = hdr + body
            nxt = h
        return struct.pack("!IHBB16s16s", 0x60000000, len(body), nxt, 64, _ip6b(r.choice(V6)),
                           _ip6b(r.choice(V6))) + body

    def payload(self, depth=0):
        r = self.r
        k = r.random()
        if k < 0.40:
            return 0x0800, self.ipv4()
        if k < 0.65:
            return 0x86DD, self.ipv6()
        if k < 0.72:
            op = r.choice([1, 2])
            return 0x0806, struct.pack("!HHBBH6s4s6s4s", 1, 0x800, 6, 4, op, MACS[2], _ip4b(r.choice(V4)),
                                       b"\0" * 6, _ip4b(r.choice(V4)))
        if k < 0.82 and depth == 0:
            labels = [r.choice(LABELS) for _ in range(r.choice([1, 1, 2, 3]))]
            inner_t, inner = (0x0800, self.ipv4()) if r.random() < 0.6 else (0x86DD, self.ipv6())
            mp = b"".join(struct.pack("!I", (lab << 12) | ((i == len(labels) - 1) << 8) | 64)
                          for i, lab in enumerate(labels))
            return r.choice([0x8847, 0x8848]), mp + inner
        if k < 0.86:
            return 0x8864, struct.pack("!BBHH", 0x11, 0, 1, 0) + struct.pack("!H", 0x21) + self.ipv4()
        if k < 0.92:
            return 0x88CC, bytes(r.randrange(256) for _ in range(30))
        return r.choice([0x9000, 0x0842, 0x22F0, 0x05DC, 0x0100]), bytes(r.randrange(256) for _ in range(r.randrange(50)))

    def eth(self, depth=0):
        r = self.r
        et, body = self.payload(depth)
        tags = b""
        for _ in range(r.choice([0, 0, 0, 1, 1, 2, 3]) if depth == 0 else 0):
            tags += struct.pack("!HH", r.choice([0x8100, 0x8100, 0x88A8, 0x9100]),
                                (r.randrange(8) << 13) | r.choice(VIDS))
        return r.choice(MACS) + r.choice(MACS) + tags + struct.pack("!H", et) + body

    def frame(self):
        f = self.eth()
        r = self.r
        if r.random() < 0.2:
            f = f[: r.randrange(14, len(f) + 1)]        # truncated anywhere past the Ethernet header
        elif len(f) < 60 and r.random() < 0.5:
            f = f + bytes(60 - len(f))
        return f[:3000]


def corpus(n=4000):
    g = Gen(SEED)
    frames = [g.frame() for _ in range(n)]
    try:   # the project's hand-made edge cases (valid and malformed frames)
        from tests.corpus.frames import FRAMES
    except ImportError:
        FRAMES = []
    frames += [fr for _, fr in FRAMES if 14 <= len(fr) <= 3000]
    varied = REPO / "tests" / "corpus" / "varied.pcap"
    if varied.exists():
        from stenoxdp.cli.filter import CaptureReader

        with open(varied, "rb") as f:
            for _, fr, lt, isp in CaptureReader(f, str(varied)):
                if isp and lt == 1 and 14 <= len(fr) <= 3000:
                    frames.append(fr)
    return frames


FIXED = [
    "tcp", "udp", "icmp", "icmp6", "ip", "ip6", "arp", "rarp", "vlan", "mpls", "pppoes", "ether proto 0x88cc",
    "port 22", "not port 22", "tcp port 80", "udp port 53", "src port 1000", "dst port 2029", "portrange 1000-2000",
    "tcp portrange 22-80", "host 198.18.0.1", "src host 198.18.0.2", "dst host 198.19.7.9", "net 198.18.0.0/15",
    "src net 10.0.0.0/8", "ip6 host 2001:db8::1", "ip6 net 2001:db8::/32", "host 2001:db8:1::53",
    "ether host 02:00:00:00:00:01", "ether src 02:00:00:00:00:02", "ether broadcast", "ether multicast",
    "ip multicast", "ip6 multicast", "ip proto 132", "ip proto 47", "ip6 proto 58", "ip proto \\tcp",
    "vlan 100", "vlan 10 and vlan 20", "vlan and vlan 30 and tcp", "vlan 100 and host 198.18.0.1",
    "not vlan", "vlan and not vlan 4095", "mpls 100", "mpls 100 and mpls 200", "mpls and ip6 and udp",
    "mpls 16 and tcp port 443", "pppoes and ip and tcp", "pppoes 1 and udp port 53",
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0", "tcp[13] = 18",
    "ip[6:2] & 0x1fff != 0", "ip[6:2] & 0x1fff = 0 and udp", "ip[0] & 0xf > 5", "ip[0] & 0xf != 5",
    "icmp[icmptype] = icmp-echo", "icmp[icmptype] != icmp-echo and icmp", "ip6[40] = 128",
    "ip[2:2] - ((ip[0]&0xf)<<2) > 40", "len > 100", "less 64", "greater 200", "len % 7 = 3",
    "ip[1] / ip[3] > 2", "ip[4] % ip[5] = 1", "ip[0] << ip[1] > 5", "ip[2] >> ip[9] = 0", "-ip[2] & 0xff = 3",
    "ether[0] ^ ether[1] = 0", "ip6[6] * 3 = 18", "ether[12:4] = 0x81000064", "udp[8:4] % 7 = 2",
    "tcp[((tcp[12] & 0xf0) >> 2):4] = 0x47455420", "udp[8:2] = 0x0800", "ip[len - 14 - 1] = 0",
    "ether[len - 1] & 1 = 1", "geneve", "geneve and ip", "udp port 4789 and udp[8] & 8 != 0",
    "not (port 22 or port 443)", "(tcp or udp) and not port 53", "not port 22 and (tcp or udp)",
    "ip and not net 198.18.0.0/16", "(host 198.18.0.1 or host 198.18.0.2) and (port 80 or port 443)",
    " or ".join(f"port {p}" for p in range(1000, 1030)),
    "not (" + " or ".join(f"port {p}" for p in [22, 443] + list(range(2000, 2028))) + ")",
    " or ".join(f"host 198.18.0.{i}" for i in range(1, 41)),
    "ether[0:4] = 0xffffffff", "ether[6:2] & 0x0200 != 0", "ip[8] < 65", "ip[9] = 17 or ip6[6] = 17",
    "ether proto 0x8847", "ether proto 0x8864", "ether proto \\arp", "ip6 and ip6[40+13] & 2 != 0",
]


def _prim(r: random.Random) -> str:
    p = r.choice(PORTS[:-1])
    c = [
        lambda: r.choice(["tcp", "udp", "icmp", "ip", "ip6", "arp", "icmp6", "sctp"]),
        lambda: f"{r.choice(['', 'src ', 'dst ', 'tcp ', 'udp ', 'tcp src ', 'udp dst '])}port {p}",
        lambda: f"portrange {p}-{p + r.randrange(2000)}",
        lambda: f"{r.choice(['', 'src ', 'dst '])}host {r.choice(V4 + V6[:3])}",
        lambda: f"{r.choice(['', 'src ', 'dst '])}net {r.choice(['198.18.0.0/15', '198.18.0.0/24', '10.0.0.0/8', '2001:db8::/32', '224.0.0.0/4'])}",
        lambda: f"vlan {r.choice(VIDS)}" if r.random() < 0.7 else "vlan",
        lambda: f"mpls {r.choice(LABELS[:3])}" if r.random() < 0.6 else "mpls",
        lambda: f"ip proto {r.choice([1, 6, 17, 47, 132])}",
        lambda: f"ether proto 0x{r.choice([0x800, 0x86dd, 0x806, 0x88cc, 0x8847]):04x}",
        lambda: r.choice(["ether broadcast", "ether multicast", "ip multicast", "ip6 multicast",
                          "ether host 02:00:00:00:00:01", "ether dst ff:ff:ff:ff:ff:ff"]),
        lambda: f"{r.choice(['less', 'greater'])} {r.randrange(40, 300)}",
        lambda: f"tcp[tcpflags] & {r.choice(['tcp-syn', 'tcp-ack', 'tcp-fin', 'tcp-rst', 'tcp-push'])} != 0",
        lambda: f"ip[6:2] & 0x1fff {r.choice(['=', '!='])} 0",
        lambda: f"{r.choice(['ip', 'ether', 'udp', 'tcp', 'ip6'])}[{r.randrange(0, 48)}] "
                f"{r.choice(['+', '-', '*', '/', '%', '&', '|', '^', '<<', '>>'])} "
                f"{r.choice([str(r.randrange(0, 40)), 'ip[1]', 'ether[13]', 'len', 'ip[9]'])} "
                f"{r.choice(['=', '!=', '>', '<', '>=', '<='])} {r.randrange(0, 64)}",
        lambda: f"ether[{r.randrange(0, 60)}:{r.choice([1, 2, 4])}] & 0x{r.randrange(1 << 16):x} != 0",
        lambda: "pppoes" + (f" {r.randrange(3)}" if r.random() < 0.5 else ""),
        lambda: r.choice(["geneve", "geneve 1"]),
    ]
    return r.choice(c)()


def _rexpr(r: random.Random, depth: int) -> str:
    k = r.random()
    if depth <= 0 or k < 0.35:
        return _prim(r)
    if k < 0.45:
        return f"not {_rexpr(r, depth - 1)}"
    return f"({_rexpr(r, depth - 1)} {r.choice(['and', 'or', '&&', '||'])} {_rexpr(r, depth - 1)})"


def expressions(n_random=240):
    r = random.Random(SEED)
    out = list(FIXED)
    seen = set(out)
    while len(out) < len(FIXED) + n_random:
        e = _rexpr(r, r.choice([1, 2, 3, 4]))
        if e in seen:
            continue
        seen.add(e)
        try:
            cbpf.compile_expr(e)
        except FilterError as err:
            if "backward jump" in str(err) or "ancillary" in str(err):
                raise
            continue      # libpcap refuses it ("expression rejects all packets"), or libpcap's
            # code reads scratch memory it never wrote (undefined; refused, see cbpf._check_scratch)
        out.append(e)
    return out


def _load_batch(progs):
    from bcc import BPF

    b = BPF(text=cbpf.harness_source(progs).encode(), cflags=["-Wno-unused-label"])
    fds = [b.load_func(f"sxdp_f{n}".encode(), BPF.XDP).fd for n in range(len(progs))]
    return b, fds


def test_every_expression_matches_libpcap_on_the_corpus():
    frames = corpus()
    exprs = expressions()
    assert len(exprs) >= 300 and len(frames) >= 4000
    progs = [cbpf.compile_expr(e) for e in exprs]
    prepared = cbpf.prepare_frames(frames)
    t0 = time.monotonic()
    mismatches, accepted, checked = [], 0, 0
    per_expr_hits = []
    for lo in range(0, len(progs), 100):
        batch = progs[lo:lo + 100]
        b, fds = _load_batch(batch)
        try:
            for j, (p, fd) in enumerate(zip(batch, fds)):
                ref = cbpf.PcapMatcher(p)
                hits = 0
                for fr, got in zip(frames, cbpf.test_run_many(fd, prepared)):
                    want = ref(fr) != 0
                    assert got in (cbpf.XDP_DROP, cbpf.XDP_PASS)
                    checked += 1
                    hits += want
                    if (got == cbpf.XDP_DROP) != want and len(mismatches) < 20:
                        mismatches.append((exprs[lo + j], fr.hex(), want))
                per_expr_hits.append(hits)
                accepted += hits
        finally:
            b.cleanup()
    elapsed = time.monotonic() - t0
    print(f"{len(exprs)} expressions x {len(frames)} frames = {checked} verdicts in {elapsed:.1f} s")
    assert not mismatches, f"XDP and libpcap disagree: {mismatches[:5]}"
    # the corpus exercises the filters: most fixed expressions match something and reject something
    informative = sum(1 for h in per_expr_hits if 0 < h < len(frames))
    assert informative >= 0.8 * len(exprs), f"only {informative} of {len(exprs)} expressions split the corpus"


def test_edge_programs_match_libpcap():
    """Hand-written classic BPF for what libpcap's compiler rarely emits:
    division/modulo by X == 0, shifts by X >= 32, loads at the very end of
    the frame and just past it, scratch memory, len, neg, ja."""
    I = cbpf.Insn
    LD, LDX, ALU, JMP, RET = cbpf.LD, cbpf.LDX, cbpf.ALU, cbpf.JMP, cbpf.RET
    progs = []
    for op in (cbpf.DIV, cbpf.MOD, cbpf.LSH, cbpf.RSH):
        # A = frame[14], X = frame[15], A op= X, return A
        progs.append([I(LD | cbpf.B | cbpf.ABS, 0, 0, 14), I(LDX | cbpf.B | cbpf.MSH, 0, 0, 15),
                      I(LD | cbpf.B | cbpf.ABS, 0, 0, 15), I(cbpf.MISC | cbpf.TAX, 0, 0, 0),
                      I(LD | cbpf.W | cbpf.ABS, 0, 0, 16), I(ALU | op | cbpf.X, 0, 0, 0), I(RET | cbpf.RET_A, 0, 0, 0)])
    for size in (cbpf.B, cbpf.H, cbpf.W):
        for k in (0, 58, 59, 60, 61, 62, 63, 64, 1500, 0x7FFF, 0x8000, 0xFFFFFFF0):
            if k >= cbpf.SKF_AD_OFF:
                continue
            progs.append([I(LD | size | cbpf.ABS, 0, 0, k), I(RET | cbpf.K, 0, 0, 1)])
            progs.append([I(LDX | cbpf.W | cbpf.LEN, 0, 0, 0), I(LD | size | cbpf.IND, 0, 0, k & 0xFF),
                          I(RET | cbpf.K, 0, 0, 1)])
        progs.append([I(LDX | cbpf.W | cbpf.IMM, 0, 0, 0xFFFFFFFF), I(LD | size | cbpf.IND, 0, 0, 2),
                      I(RET | cbpf.K, 0, 0, 1)])
    progs.append([I(LD | cbpf.W | cbpf.LEN, 0, 0, 0), I(cbpf.ST, 0, 0, 3), I(LD | cbpf.W | cbpf.IMM, 0, 0, 7),
                  I(LDX | cbpf.W | cbpf.MEM, 0, 0, 3), I(ALU | cbpf.NEG, 0, 0, 0), I(ALU | cbpf.ADD | cbpf.X, 0, 0, 0),
                  I(cbpf.STX, 0, 0, 15), I(LD | cbpf.W | cbpf.MEM, 0, 0, 15), I(JMP | cbpf.JA, 0, 0, 1),
                  I(RET | cbpf.K, 0, 0, 0), I(JMP | cbpf.JGE | cbpf.K, 0, 1, 0xFFFFFFC0), I(RET | cbpf.K, 0, 0, 5),
                  I(RET | cbpf.K, 0, 0, 0)])
    progs.append([I(LD | cbpf.B | cbpf.ABS, 0, 0, 20), I(cbpf.MISC | cbpf.TAX, 0, 0, 0),
                  I(LD | cbpf.B | cbpf.ABS, 0, 0, 21), I(JMP | cbpf.JSET | cbpf.X, 0, 1, 0),
                  I(RET | cbpf.K, 0, 0, 0xFFFFFFFF), I(JMP | cbpf.JGT | cbpf.X, 1, 0, 0), I(RET | cbpf.K, 0, 0, 0),
                  I(cbpf.MISC | cbpf.TXA, 0, 0, 0), I(ALU | cbpf.MUL | cbpf.K, 0, 0, 3),
                  I(ALU | cbpf.SUB | cbpf.K, 0, 0, 0x2D), I(RET | cbpf.RET_A, 0, 0, 0)])
    r = random.Random(7)
    frames = [bytes(r.randrange(256) for _ in range(n)) for n in range(14, 80)] * 4
    frames += [bytes(r.randrange(256) for _ in range(n)) for n in (1499, 1500, 1501, 2999, 3000)]
    frames += [b"\0" * 14 + bytes([0, 0, 0, 0]) + b"\x05" * 50, b"\0" * 14 + bytes([0, 40, 0, 33]) + b"\xff" * 50]
    b, fds = _load_batch(progs)
    try:
        bad = []
        for p, fd in zip(progs, fds):
            ref = cbpf.PcapMatcher(p)
            for fr in frames:
                want = ref(fr) != 0
                if (cbpf.prog_test_run(fd, fr) == cbpf.XDP_DROP) != want:
                    bad.append((cbpf.disassemble(p), len(fr), want))
        assert not bad, bad[:3]
    finally:
        b.cleanup()


def test_long_expressions_pass_the_verifier():
    longs = [
        " or ".join(f"port {p}" for p in range(3000, 3060)),
        "not (" + " or ".join(f"port {p}" for p in range(3000, 3060)) + ")",
        " or ".join(f"net 198.18.{i}.0/24" for i in range(0, 120)),
        " and ".join(f"not host 198.19.{i}.{i}" for i in range(0, 60)),
        "(" + " or ".join(f"vlan {v}" for v in range(1, 9)) + ") and (" + " or ".join(f"port {p}" for p in range(80, 100)) + ")",
    ]
    progs = [cbpf.compile_expr(e) for e in longs]
    assert max(len(p) for p in progs) > 300
    b, fds = _load_batch(progs)
    try:
        assert all(fd > 0 for fd in fds)
    finally:
        b.cleanup()
    # inside the real capture program too (the filter is inlined before the parser)
    from stenoxdp import bpfprog

    for e in (longs[1], " or ".join(f"net 198.18.{i}.0/24" for i in range(0, 200))):
        f = cbpf.Filter.from_expr(e)
        with bpfprog.load(filter_c=f.c_source()) as prog:
            rc, out = prog.test_run(bytes(14))
            assert rc == bpfprog.XDP_PASS


REAL_SUBSET = ["udp", "not port 22 and (tcp or udp)", "vlan 100 and host 198.18.0.1", "mpls 100 and udp",
               "tcp[tcpflags] & tcp-syn != 0", "ip[1] / ip[3] > 2", "ether proto 0x88cc",
               "not (" + " or ".join(f"port {p}" for p in [22, 443] + list(range(2000, 2028))) + ")"]


def test_real_capture_program_verdicts_match_libpcap():
    """The same verdicts through the capture program itself (bpfprog): a
    filtered frame comes back from XDP_PASS untouched and counts FILTERED; a
    captured one has the metadata reserved in front."""
    from stenoxdp import bpfprog

    frames = corpus(600)
    for e in REAL_SUBSET:
        f = cbpf.Filter.from_expr(e)
        ref = cbpf.PcapMatcher(f.insns)
        with bpfprog.load(filter_c=f.c_source()) as prog:
            c0 = prog.counters()["filtered"]
            want_filtered = 0
            for fr in frames:
                want = ref(fr) != 0
                rc, out = prog.test_run(fr)
                captured = not (rc == bpfprog.XDP_PASS and out == fr)
                assert captured == want, (e, fr.hex())
                want_filtered += not want
            assert prog.counters()["filtered"] - c0 == want_filtered


def _write_pcap(path, frames, nano=True):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for n, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + n, (123_456_789 + 7 * n) % (10 ** 9 if nano else 10 ** 6),
                                len(fr), len(fr) + (n % 3 == 0) * 4) + fr)


@pytest.mark.parametrize("expr", ["udp and not port 53", "vlan or mpls", "tcp[tcpflags] & tcp-syn != 0"])
def test_cli_filter_test_writes_what_tcpdump_keeps(tmp_path, stenoctl, expr):
    """`stenoctl filter test` through the real capture program keeps exactly
    the packets tcpdump's filter keeps, records byte-identical, for pcap (ns
    and us) and pcapng input (pcapng made by editcap, compared via tcpdump)."""
    import shutil
    import subprocess

    frames = corpus(1500)
    for nano in (True, False):
        src, out, ref = tmp_path / f"in{nano}.pcap", tmp_path / f"out{nano}.pcap", tmp_path / f"ref{nano}.pcap"
        _write_pcap(src, frames, nano)
        r = subprocess.run([stenoctl, "filter", "test", expr, str(src), "-w", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        prec = ["--time-stamp-precision=nano"] if nano else []
        subprocess.run(["tcpdump", "-r", str(src), *prec, "-w", str(ref), expr], check=True, capture_output=True)
        assert out.read_bytes() == ref.read_bytes()
        kept = sum(cbpf.PcapMatcher(cbpf.compile_expr(expr))(fr) != 0 for fr in frames)
        assert f"{len(frames)} packets: {kept} captured, {len(frames) - kept} filtered out" in r.stdout
    if shutil.which("editcap"):
        ng, out_ng = tmp_path / "in.pcapng", tmp_path / "out.pcapng"
        subprocess.run(["editcap", "-F", "pcapng", str(tmp_path / "inTrue.pcap"), str(ng)], check=True)
        r = subprocess.run([stenoctl, "filter", "test", expr, str(ng), "-w", str(out_ng)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert out_ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
        a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
        subprocess.run(["tcpdump", "-r", str(out_ng), "--time-stamp-precision=nano", "-w", str(a)], check=True, capture_output=True)
        subprocess.run(["tcpdump", "-r", str(ng), "--time-stamp-precision=nano", "-w", str(b), expr], check=True, capture_output=True)
        assert a.read_bytes() == b.read_bytes()


def test_cli_filter_test_hex_and_skips(tmp_path, stenoctl):
    import subprocess

    f = cbpf.Filter.from_expr("udp")
    frames = corpus(200) + [b"\xff" * 12 + b"\x08\x00" + bytes(5000)]
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    _write_pcap(src, frames)
    r = subprocess.run([stenoctl, "filter", "test", "--filter-hex", f.hex, str(src), "-w", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 skipped" in r.stdout
    bad = subprocess.run([stenoctl, "filter", "test", "udp port", str(src)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    notcap = tmp_path / "x.txt"
    notcap.write_text("hello world\n")
    bad = subprocess.run([stenoctl, "filter", "test", "udp", str(notcap)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a pcap or pcapng file" in bad.stderr


def test_random_hand_written_programs_verify_and_match_libpcap():
    """Random valid classic BPF (every opcode, as a --filter-hex may carry)
    passes the verifier and gives libpcap's verdicts in the kernel."""
    from tests.unit.test_cbpf import random_program

    r = random.Random(12)
    progs = [random_program(r) for _ in range(200)]
    frames = corpus(800)
    bad = []
    for lo in range(0, len(progs), 100):
        batch = progs[lo:lo + 100]
        b, fds = _load_batch(batch)
        try:
            for p, fd in zip(batch, fds):
                ref = cbpf.PcapMatcher(p)
                for fr in frames:
                    if (cbpf.prog_test_run(fd, fr) == cbpf.XDP_DROP) != (ref(fr) != 0):
                        bad.append((cbpf.to_hex(p), fr.hex()))
        finally:
            b.cleanup()
    assert not bad, (len(bad), bad[0])

"""The oracle: tests/corpus/varied.pcap (real traffic + hand-made frames, see
tests/corpus/make_varied.py) imported into a store; for >= 300 queries (fixed
and qlang.random_query) our answer equals `tcpdump -r varied.pcap -w - EXPR`
(EXPR = qlang.to_pcap_filter) packet for packet, byte for byte, in time order,
on every packet outside the documented differences (qlang.KNOWN_DIFFERENCES:
packets inside VLAN tags or MPLS, IPv6 extension headers, malformed IP, TCP/UDP
headers cut short). Each difference has its own test below, on real frames of
the same capture. Time clauses have no pcap-filter form: for them tcpdump's
answer is cut by timestamp here, exactly."""
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stenoxdp import layout
from stenoxdp.indexer import engine, importer, qlang
from stenoxdp.indexer.index import recs_from_pcap
from stenoxdp.store import Store

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "varied.pcap"
TCPDUMP = shutil.which("tcpdump")
pytestmark = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")

EXT6 = {0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254}


def _records(data: bytes) -> list[bytes]:
    out, p = [], 24
    while p + 16 <= len(data):
        cap = struct.unpack_from("<I", data, p + 8)[0]
        out.append(data[p : p + 16 + cap])
        p += 16 + cap
    return out


def _exotic(rec, frame: bytes) -> bool:
    """A packet where tcpdump's fixed-offset reading and our parser part (documented)."""
    fl = int(rec["flags"])
    if rec["n_vlan"] or rec["n_mpls"] or fl & layout.F_MALFORMED:
        return True
    et = int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
    ip = fl & (layout.F_IPV4 | layout.F_IPV6)
    if et in (0x0800, 0x86DD) and not ip:
        return True
    if fl & layout.F_IPV6 and len(frame) > 20 and frame[20] in EXT6:
        return True
    if ip and rec["proto"] in (6, 17) and not fl & layout.F_PORTS and not fl & layout.F_NONFIRST_FRAG:
        return True
    return False


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    st = Store(tmp_path_factory.mktemp("oracle")).init()
    res = importer.import_file(st, CORPUS, rotate_ns=2 * 10**9)  # several files: the merge is exercised
    assert res.files >= 3
    exotic = {}
    all_ts = []
    for pf in st.files():
        data = pf.pcap.read_bytes()
        for r in recs_from_pcap(pf.pcap):  # test bookkeeping only
            off, cap = int(r["offset"]), int(r["caplen"])
            rb = data[off : off + 16 + cap]
            exotic[rb] = _exotic(r, data[off + 16 : off + 16 + cap])
            all_ts.append(int(r["ts_ns"]))
    return st, exotic, sorted(all_ts), res


def _tcpdump(expr: str) -> list[bytes]:
    r = subprocess.run([TCPDUMP, "--time-stamp-precision=nano", "-r", str(CORPUS), "-w", "-", expr], capture_output=True, timeout=30)
    if r.returncode == 1 and b"rejects all packets" in r.stderr:
        return []  # libpcap proved the filter empty (e.g. 'ip and ip6')
    assert r.returncode == 0, (expr, r.stderr.decode())
    return _records(r.stdout)


def _ours(st, text: str) -> list[bytes]:
    return _records(engine.query(st, text).read_all())


def _ts(rec: bytes) -> int:
    s, ns = struct.unpack_from("<II", rec)
    return s * 10**9 + ns


def _check(world, text: str, lo=None, hi=None):
    st, exotic, _, _ = world
    node = qlang.parse(text)
    base = node
    # strip time clauses of the form (Q and after A and before B): tcpdump answers Q, we cut by time
    ours = _ours(st, text)
    if lo is not None or hi is not None:
        base = node
        while isinstance(base, qlang.And) and isinstance(base.b, (qlang.After, qlang.Before)):
            base = base.a
    theirs = _tcpdump(qlang.to_pcap_filter(base))
    if lo is not None:
        theirs = [r for r in theirs if _ts(r) >= lo]
    if hi is not None:
        theirs = [r for r in theirs if _ts(r) < hi]
    a = [r for r in ours if not exotic[r]]
    b = [r for r in theirs if not exotic[r]]
    assert a == b, f"{text!r} -> {qlang.to_pcap_filter(base)!r}: ours {len(a)} tcpdump {len(b)}"
    return ours, theirs


FIXED = [
    "tcp", "udp", "icmp", "icmp6", "ip", "ip6", "not ip and not ip6", "port 53", "udp and port 53",
    "tcp and port 8080", "port 4433", "src port 4433", "dst port 4433", "portrange 1-1024", "portrange 4000-9000",
    "host 198.18.0.1", "host 198.18.0.2 and tcp", "src host 198.18.0.1 and dst port 53", "host 2001:db8::2",
    "host 2001:DB8::1 and udp", "net 198.18.0.0/15", "net 198.18.0.0 mask 255.255.255.0", "net 2001:db8::/32",
    "dst net 198.18.0.0/24 and not tcp", "ip proto 17", "ip proto 58", "ip proto 1 or ip proto 58",
    "tcp and not port 8080 and not port 4433", "(tcp or udp) and host 198.18.0.2", "not (tcp or udp)",
    "! icmp && ip", "udp || icmp6", "ip6 and not icmp6", "port 8080 and host 2001:db8::1",
    "src net 2001:db8::/126 and tcp", "not host 198.18.0.1 and not host 2001:db8::1", "ip proto 47",
    "port 0", "port 65535", "host 198.18.0.77",
]


@pytest.mark.parametrize("text", FIXED)
def test_fixed(world, text):
    _check(world, text)


def test_random_queries(world):
    rng = np.random.default_rng(20261126)
    pool = qlang.QueryPool(kinds=qlang.PCAP_EXACT_KINDS, ports=(53, 80, 443, 4433, 8080, 0, 1234),
                           hosts=("198.18.0.1", "198.18.0.2", "198.18.0.77", "2001:db8::1", "2001:db8::2"))
    n = 0
    nonempty = 0
    for _ in range(260):
        text = qlang.random_query(rng, pool)
        ours, _ = _check(world, text)
        n += 1
        nonempty += bool(ours)
    assert n == 260 and nonempty > 60


def test_time_bounds_exact(world):
    _, _, ts, _ = world
    for i, j in ((100, 900), (0, 50), (1500, len(ts) - 1), (700, 701)):
        lo, hi = ts[i], ts[j]
        for q in ("tcp", "ip or not ip", "udp"):
            text = f"{q} and after {qlang._ts_text(lo)} and before {qlang._ts_text(hi)}"
            assert qlang.parse(text) is not None
            _check(world, text, lo=lo, hi=hi)


def test_whole_capture_is_byte_identical(world):
    st = world[0]
    got = _ours(st, "ip or not ip")
    with open(CORPUS, "rb") as f:
        want = _records(f.read())
    assert got == want  # every frame, caplen, length and timestamp kept, in order
    assert len(got) > 2000


def test_exotic_packets_are_present(world):
    _, exotic, _, _ = world
    assert 50 < sum(exotic.values()) < 400


# ---- the documented differences, one test each ------------------------------------
def _only_ours(world, text, expr):
    st = world[0]
    ours, theirs = set(_ours(st, text)), set(_tcpdump(expr))
    return ours - theirs, theirs - ours


def test_diff_port_inside_vlan(world):
    extra, missing = _only_ours(world, "port 80", "tcp port 80 or udp port 80")
    assert extra and all(world[1][r] for r in extra | missing)
    tagged = set(_tcpdump("vlan and (tcp port 80 or udp port 80)"))
    assert tagged <= extra  # tcpdump needs 'vlan and' to see inside the tag


def test_diff_udp_inside_mpls(world):
    extra, _ = _only_ours(world, "udp and port 20", "udp port 20")
    assert extra == set(_tcpdump("mpls and udp port 20"))


def test_diff_vlan_inner_tag(world):
    # QinQ frame 0x88a8/10, 0x8100/20: ours 'vlan 20' matches the inner tag; tcpdump's only the outer
    extra, missing = _only_ours(world, "vlan 20", "vlan 20")
    assert extra and extra <= set(_tcpdump("vlan 10 and vlan 20"))


def test_diff_ipv6_extension_headers(world):
    # udp 546 -> 547 behind a hop-by-hop header: our port sees it, tcpdump's 'udp port' looks at fixed offsets
    extra, missing = _only_ours(world, "port 547", "tcp port 547 or udp port 547")
    assert len(extra) == 2 and not missing
    assert extra <= set(_tcpdump("ip6 protochain 17"))


def test_diff_malformed_ip(world):
    # an IPv4 ethertype with a broken header: tcpdump's 'ip' is the ethertype, ours needs a parsed header
    extra, missing = _only_ours(world, "ip", "ip")
    assert missing and all(world[1][r] for r in missing)
    # and the other way: IPv4 inside VLAN/MPLS is ours only
    assert extra and all(world[1][r] for r in extra)


def test_diff_truncated_l4(world):
    # a TCP header cut to 10 bytes still shows ports 1 -> 2 to tcpdump; ours records no ports
    extra, missing = _only_ours(world, "port 2", "tcp port 2 or udp port 2")
    assert missing and not any(world[1][r] is False for r in missing)


def test_diff_time_has_no_pcap_filter():
    from stenoxdp.errors import QueryError

    with pytest.raises(QueryError):
        qlang.to_pcap_filter(qlang.parse("tcp and after 2020-01-01T00:00:00Z"))

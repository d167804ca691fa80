"""The query language: every form, precedence, errors with positions, times,
round trips (hypothesis), eval_records against a scalar reference and
hand-built records, time_bounds, and to_pcap_filter against libpcap itself
(real pcap_compile + pcap_offline_filter on frames parsed by the shared
parser)."""
from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stenoxdp import layout as L
from stenoxdp.errors import FilterError, QueryError
from stenoxdp.indexer import qlang as q
from stenoxdp.indexer.qlang import (After, And, Before, Family, Host, Icmp, Icmp6, Mpls, Net, Not, Or, Port,
                                    Proto, Vlan)

from tests.unit._randrecs import rand_recs

NOW = 1_700_000_000_123_456_789  # fixed "now" for 'ago'


def A(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


H1 = Host(A("198.18.0.1"), "any")
TCP = Proto(6)
UDP = Proto(17)


# ---- every form ---------------------------------------------------------------------
FORMS = [
    ("host 198.18.0.1", H1),
    ("host 2001:db8::1", Host(A("2001:db8::1"), "any")),
    ("host 2001:DB8::ABCD", Host(A("2001:db8::abcd"), "any")),
    ("host ::ffff:198.18.0.1", Host(A("::ffff:198.18.0.1"), "any")),
    ("src host 198.18.0.1", Host(A("198.18.0.1"), "src")),
    ("dst host 2001:db8::2", Host(A("2001:db8::2"), "dst")),
    ("src or dst host 198.18.0.1", H1),
    ("dst || src host 198.18.0.1", H1),
    ("src and dst host 198.18.0.1", And(Host(A("198.18.0.1"), "src"), Host(A("198.18.0.1"), "dst"))),
    ("net 198.18.0.0/15", Net(A("198.18.0.0"), 15, "any")),
    ("net 198.18.0.0 mask 255.254.0.0", Net(A("198.18.0.0"), 15, "any")),
    ("net 0.0.0.0/0", Net(A("0.0.0.0"), 0, "any")),
    ("net 198.18.0.1/32", Net(A("198.18.0.1"), 32, "any")),
    ("net 2001:db8::/32", Net(A("2001:db8::"), 32, "any")),
    ("net 2001:DB8::/126", Net(A("2001:db8::"), 126, "any")),
    ("src net 10.0.0.0/8", Net(A("10.0.0.0"), 8, "src")),
    ("dst net 10.0.0.0 mask 255.255.255.0", Net(A("10.0.0.0"), 24, "dst")),
    ("port 53", Port(53, 53, "any")),
    ("port 0", Port(0, 0, "any")),
    ("port 65535", Port(65535, 65535, "any")),
    ("src port 1234", Port(1234, 1234, "src")),
    ("dst port 53", Port(53, 53, "dst")),
    ("portrange 1024-2047", Port(1024, 2047, "any")),
    ("portrange 2047-1024", Port(1024, 2047, "any")),  # tcpdump swaps too
    ("src portrange 1-2", Port(1, 2, "src")),
    ("ip proto 6", TCP),
    ("ip proto 0", Proto(0)),
    ("ip proto 255", Proto(255)),
    ("ip proto tcp", TCP),
    ("ip proto \\udp", UDP),
    ("proto 47", Proto(47)),
    ("ip6 proto 58", And(Family(6), Proto(58))),
    ("tcp", TCP),
    ("udp", UDP),
    ("icmp", Icmp()),
    ("icmp6", Icmp6()),
    ("ip", Family(4)),
    ("ip6", Family(6)),
    ("vlan 0", Vlan(0)),
    ("vlan 4095", Vlan(4095)),
    ("mpls 0", Mpls(0)),
    ("mpls 1048575", Mpls(1048575)),
    ("before 2015-01-01T13:14:15Z", Before(1420118055 * 10**9)),
    ("after 2015-01-01T13:14:15Z", After(1420118055 * 10**9)),
    ("TCP", TCP),
    ("HOST 198.18.0.1", H1),
    ("Src Host 198.18.0.1", Host(A("198.18.0.1"), "src")),
    ("PortRange 1-2", Port(1, 2, "any")),
    ("  host\t198.18.0.1  ", H1),
    ("(((tcp)))", TCP),
]


@pytest.mark.parametrize("text,want", FORMS, ids=[f[0] for f in FORMS])
def test_forms(text, want):
    assert q.parse(text, now_ns=NOW) == want


def test_nodes_are_frozen_and_hashable():
    with pytest.raises(Exception):
        H1.dir = "src"  # type: ignore[misc]
    assert len({H1, Host(A("198.18.0.1"), "any"), TCP}) == 2


# ---- precedence -----------------------------------------------------------------------
PREC = [
    ("tcp or udp and port 53", And(Or(TCP, UDP), Port(53, 53, "any"))),  # Stenographer: left to right
    ("tcp and udp or port 53", Or(And(TCP, UDP), Port(53, 53, "any"))),
    ("tcp || udp && icmp || ip6", Or(And(Or(TCP, UDP), Icmp()), Family(6))),
    ("tcp or (udp and icmp)", Or(TCP, And(UDP, Icmp()))),
    ("not tcp and udp", And(Not(TCP), UDP)),
    ("!tcp || udp", Or(Not(TCP), UDP)),
    ("not (tcp or udp)", Not(Or(TCP, UDP))),
    ("not not tcp", Not(Not(TCP))),
    ("! ! tcp", Not(Not(TCP))),
    ("tcp and not udp", And(TCP, Not(UDP))),
    ("tcp&&udp", And(TCP, UDP)),
    ("(tcp)||(udp)", Or(TCP, UDP)),
    ("tcp AND udp Or icmp", Or(And(TCP, UDP), Icmp())),
    ("src host 198.18.0.1 or dst port 53", Or(Host(A("198.18.0.1"), "src"), Port(53, 53, "dst"))),
    ("tcp and src or dst port 53", And(TCP, Port(53, 53, "any"))),
]


@pytest.mark.parametrize("text,want", PREC, ids=[p[0] for p in PREC])
def test_precedence(text, want):
    assert q.parse(text) == want


# ---- errors ---------------------------------------------------------------------------
ERRORS = [
    ("", 0, "empty query"),
    ("   ", 0, "empty query"),
    ("port http", 5, "expected a port number after 'port', found 'http'"),
    ("port", 4, "expected a port number after 'port', found end of query"),
    ("port 65536", 5, "port number 65536 is out of range (0-65535)"),
    ("port -1", 5, "expected a port number"),
    ("vlan 4096", 5, "VLAN id 4096 is out of range (0-4095)"),
    ("mpls 1048576", 5, "MPLS label 1048576 is out of range (0-1048575)"),
    ("ip proto 256", 9, "protocol number 256 is out of range (0-255)"),
    ("ip proto foo", 9, "expected a protocol number after 'proto'"),
    ("portrange 1-70000", 10, "port 70000 is out of range"),
    ("portrange 80", 10, "expected a port range like 1024-2047"),
    ("net 10.0.0.1/8", 4, "non-network bits set in '10.0.0.1/8' (the network is 10.0.0.0/8)"),
    ("net 2001:db8::1/32", 4, "non-network bits set"),
    ("net 10.0.0.0/33", 4, "prefix length 33 is out of range for IPv4 (0-32)"),
    ("net 2001:db8::/129", 4, "prefix length 129 is out of range for IPv6 (0-128)"),
    ("net 10.0.0.0/x", 4, "expected a prefix length"),
    ("net 10.0.0.0", 4, "a network needs a prefix length"),
    ("net 10.0.0.0 mask 255.0.255.0", 18, "not contiguous"),
    ("net 10.0.0.0 mask 8", 18, "expected an IPv4 netmask"),
    ("net 2001:db8:: mask ffff::", 15, "'mask' applies to IPv4 networks only"),
    ("net 10.0.0.1 mask 255.0.0.0", 4, "non-network bits set"),
    ("host 10.0.0.0/8", 5, "is a network, not an address; write 'net 10.0.0.0/8'"),
    ("host example.com", 5, "host names are not supported"),
    ("host 1.2.3", 5, "expected an IPv4 or IPv6 address after 'host'"),
    ("host 198.18.0.256", 5, "expected an IPv4 or IPv6 address"),
    ("host fe80::1%eth0", 5, "expected an IPv4 or IPv6 address"),
    ("host", 4, "found end of query"),
    ("tcp udp", 4, "expected 'and', 'or' or end of query, found 'udp'"),
    ("tcp and", 7, "expected a filter clause"),
    ("and tcp", 0, "expected a filter clause"),
    ("tcp and or udp", 8, "after 'and', found 'or'"),
    ("not", 3, "after 'not', found end of query"),
    ("(tcp", 4, "unbalanced '(': the '(' at position 0 is never closed"),
    ("((tcp) or udp", 13, "the '(' at position 0 is never closed"),
    ("tcp)", 3, "unbalanced ')'"),
    ("(tcp udp)", 5, "expected 'and', 'or' or ')' (closing the '(' at position 0), found 'udp'"),
    ("()", 1, "empty parentheses"),
    ("tcp & udp", 4, "a single '&' is not an operator"),
    ("tcp | udp", 4, "a single '|' is not an operator"),
    ("80", 0, "a value needs its keyword first"),
    ("arp", 0, "tcpdump keyword this language does not have"),
    ("src tcp", 4, "expected 'host', 'net', 'port' or 'portrange' after 'src', found 'tcp'"),
    ("src or dst tcp", 11, "after 'src or dst'"),
    ("before", 6, "expected a time after 'before'"),
    ("before yesterday", 7, "expected a time after 'before'"),
    ("after 2015-01-01", 6, "is not an RFC 3339 time"),
    ("after 2015-01-01 13:14:15Z", 6, "is not an RFC 3339 time"),
    ("after 2015-02-29T00:00:00Z", 6, "is not a valid date"),
    ("after 2015-13-01T00:00:00Z", 6, "is not a valid date"),
    ("after 2015-01-01T24:00:00Z", 6, "is not a valid time of day"),
    ("after 2015-01-01T00:00:60Z", 6, "is not a valid time of day"),
    ("after 2015-01-01T00:00:00+24:00", 6, "invalid UTC offset"),
    ("after 2015-01-01T00:00:00", 6, "is not an RFC 3339 time"),
    ("after 5 ago", 8, "expected a unit (s, m, h or d) after '5', found 'ago'"),
    ("after 5m", 8, "expected 'ago' after the duration, found end of query"),
    ("after 5y ago", 6, "expected a time"),
    ("after 5 m later", 10, "expected 'ago'"),
]


@pytest.mark.parametrize("text,pos,msg", ERRORS, ids=[e[0] or "<empty>" for e in ERRORS])
def test_errors(text, pos, msg):
    with pytest.raises(QueryError) as ei:
        q.parse(text, now_ns=NOW)
    e = ei.value
    assert e.pos == pos, str(e)
    assert str(e).startswith(f"at position {pos}: "), str(e)
    assert msg in str(e)
    assert "\n" not in str(e)  # one line for users
    assert e.exit_code == 2
    # caret form: the query, then a caret under the position
    lines = e.detail.split("\n")
    assert lines[0] == text and lines[1] == " " * pos + "^"


def test_caret_helper():
    assert q.caret("port http", 5) == "port http\n     ^"
    assert q.caret("x", None) == "x"


def test_parse_refuses_non_text():
    with pytest.raises(QueryError):
        q.parse(b"tcp")  # type: ignore[arg-type]


# ---- times ----------------------------------------------------------------------------
T0 = 1420118055  # 2015-01-01T13:14:15Z


@pytest.mark.parametrize("text,ns", [
    ("2015-01-01T13:14:15Z", T0 * 10**9),
    ("2015-01-01t13:14:15z", T0 * 10**9),
    ("2015-01-01T13:14:15+01:00", (T0 - 3600) * 10**9),
    ("2015-01-01T13:14:15-05:30", (T0 + 5 * 3600 + 1800) * 10**9),
    ("2015-01-01T13:14:15+00:00", T0 * 10**9),
    ("2015-01-01T13:14:15.5Z", T0 * 10**9 + 500_000_000),
    ("2015-01-01T13:14:15.000001Z", T0 * 10**9 + 1000),
    ("2015-01-01T13:14:15.123456789Z", T0 * 10**9 + 123456789),
    ("2015-01-01T13:14:15.1234567891234Z", T0 * 10**9 + 123456789),  # beyond ns: cut
    ("2016-02-29T00:00:00Z", 1456704000 * 10**9),
    ("1970-01-01T00:00:00Z", 0),
])
def test_rfc3339(text, ns):
    assert q.parse(f"before {text}") == Before(ns)
    assert q.parse(f"after {text}") == After(ns)


@pytest.mark.parametrize("text,delta", [
    ("45m ago", 45 * 60),
    ("45 m ago", 45 * 60),
    ("45M AGO", 45 * 60),
    ("3h ago", 3 * 3600),
    ("3 h ago", 3 * 3600),
    ("30s ago", 30),
    ("2d ago", 2 * 86400),
    ("1h30m ago", 5400),
    ("0m ago", 0),
])
def test_ago(text, delta):
    assert q.parse(f"after {text}", now_ns=NOW) == After(NOW - delta * 10**9)
    assert q.parse(f"before {text}", now_ns=NOW) == Before(NOW - delta * 10**9)


def test_ago_uses_one_clock_reading(monkeypatch):
    calls = iter([5 * 10**12, 9 * 10**12])
    monkeypatch.setattr(q.time, "time_ns", lambda: next(calls))
    n = q.parse("after 1s ago and before 0s ago")
    assert n == And(After(5 * 10**12 - 10**9), Before(5 * 10**12))


def test_time_window_query():
    n = q.parse("after 2015-01-01T13:14:15Z and before 2015-01-01T13:15:15Z and port 53")
    assert n == And(And(After(T0 * 10**9), Before((T0 + 60) * 10**9)), Port(53, 53, "any"))


# ---- format / round trips ---------------------------------------------------------------
def _st_addr():
    return st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))


def _net(addr: bytes, prefix: int) -> bytes:
    w = len(addr) * 8
    prefix = min(prefix, w)
    v = int.from_bytes(addr, "big") & (((1 << w) - 1) ^ ((1 << (w - prefix)) - 1))
    return v.to_bytes(len(addr), "big")


dirs = st.sampled_from(q.DIRS)
st_host = st.builds(Host, _st_addr(), dirs)
st_net = st.builds(
    lambda a, p, d: Net(_net(a, p % (len(a) * 8 + 1)), p % (len(a) * 8 + 1), d),
    _st_addr(), st.integers(0, 128), dirs)
st_port = st.builds(lambda a, b, d: Port(min(a, b), max(a, b), d), st.integers(0, 65535),
                    st.integers(0, 65535), dirs)
st_ts = st.integers(0, 2**64 - 1)
leaves = st.one_of(
    st_host, st_net, st_port, st.builds(Proto, st.integers(0, 255)), st.just(Icmp()), st.just(Icmp6()),
    st.builds(Family, st.sampled_from([4, 6])), st.builds(Vlan, st.integers(0, 4095)),
    st.builds(Mpls, st.integers(0, 1048575)), st.builds(Before, st_ts), st.builds(After, st_ts),
)
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(st.builds(And, kids, kids), st.builds(Or, kids, kids), st.builds(Not, kids)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_format_round_trip(node):
    text = q.format(node)
    assert q.parse(text) == node, text


@settings(max_examples=200, deadline=None)
@given(trees, st.integers(0, 2**32))
def test_render_round_trip(node, seed):
    """The varied surface syntax (&&, ||, !, case, masks, 'src or dst', extra
    parentheses) parses to the same tree."""
    text = q.render(node, random.Random(seed))
    assert q.parse(text) == node, text


def test_format_examples():
    assert q.format(q.parse("tcp or udp and port 53")) == "tcp or udp and port 53"
    assert q.format(q.parse("tcp or (udp and port 53)")) == "tcp or (udp and port 53)"
    assert q.format(q.parse("!(tcp || udp)")) == "not (tcp or udp)"
    assert q.format(q.parse("net 10.0.0.0 mask 255.0.0.0")) == "net 10.0.0.0/8"
    assert q.format(q.parse("host 2001:DB8:0:0::1")) == "host 2001:db8::1"
    assert q.format(Before(T0 * 10**9 + 5)) == "before 2015-01-01T13:14:15.000000005Z"
    assert q.format(q.parse("ip proto 1")) == "ip proto 1"


# ---- random_query ---------------------------------------------------------------------
def test_random_query_parses_and_is_reproducible():
    texts = [q.random_query(random.Random(7)) for _ in range(2)]
    assert texts[0] == texts[1]
    rng = np.random.default_rng(3)  # numpy Generators work too
    seen = set()
    for _ in range(300):
        t = q.random_query(rng)
        node = q.parse(t)
        assert not q.has_time(node)
        seen.update(type(n).__name__ for n in q.walk(node))
    assert {"Host", "Net", "Port", "Proto", "Icmp", "Icmp6", "Family", "Vlan", "Mpls", "And", "Or", "Not"} <= seen


def test_random_query_pool():
    pool = q.QueryPool(hosts=("198.18.0.9",), kinds=("host",), dirs=("any",))
    rng = random.Random(1)
    for _ in range(50):
        for n in q.walk(q.parse(q.random_query(rng, pool))):
            assert isinstance(n, (And, Or, Not)) or n == Host(A("198.18.0.9"), "any")


# ---- eval_records on hand-built records -----------------------------------------------------
def rec(*, src="", dst="", sport=0, dport=0, proto=0, flags=None, vlans=(), mpls=None, ts=0):
    r = np.zeros(1, L.REC_DTYPE)[0]
    fl = 0
    for field, s in (("src", src), ("dst", dst)):
        if s:
            b = A(s)
            r[field][: len(b)] = np.frombuffer(b, np.uint8)
            fl |= L.F_IPV4 if len(b) == 4 else L.F_IPV6
    if sport or dport:
        fl |= L.F_PORTS
    r["sport"], r["dport"], r["proto"] = sport, dport, proto
    r["n_vlan"] = len(vlans)
    for i, v in enumerate(vlans[:2]):
        r["vlan"][i] = v
    if mpls is not None:
        r["n_mpls"], r["mpls"] = 1, mpls
    r["ts_ns"] = ts
    r["flags"] = fl if flags is None else flags
    return r


RECS = np.array([
    rec(src="198.18.0.1", dst="198.18.0.2", sport=40000, dport=53, proto=17, ts=100),            # 0 v4 udp
    rec(src="2001:db8::1", dst="2001:db8::2", sport=443, dport=50000, proto=6, ts=200),          # 1 v6 tcp
    rec(src="198.18.0.2", dst="10.0.0.1", proto=1, ts=300),                                      # 2 v4 icmp
    rec(src="2001:db8::2", dst="2001:db8::1", proto=58, ts=400),                                 # 3 v6 icmp6
    rec(src="198.18.0.1", dst="198.18.0.2", proto=17, flags=L.F_IPV4 | L.F_FRAG | L.F_NONFIRST_FRAG,
        ts=500),                                                                                 # 4 non-first frag
    rec(ts=600, vlans=(10, 20, 30)),                                                             # 5 ARP-like, 3 tags
    rec(ts=700, vlans=(30,), mpls=16, src="198.18.0.1", dst="198.18.0.3", sport=53, dport=53,
        proto=17),                                                                               # 6 vlan+mpls v4
    rec(src="c612:0001::", dst="::1", proto=1, ts=800),                                           # 7 v6 whose bytes start c6.12.00.01
    rec(src="198.18.0.1", dst="198.18.0.2", proto=6, flags=L.F_IPV4, sport=80, dport=80, ts=900),  # 8 ports w/o F_PORTS
    rec(src="198.19.255.255", dst="198.18.0.2", proto=58, sport=0, dport=0, ts=1000),            # 9 v4 proto 58
])
STALE = rec(ts=1100, vlans=(40,))
STALE["vlan"][1] = 99  # slot 1 is junk when n_vlan == 1
RECS = np.concatenate([RECS, np.array([STALE])])
MPLS0 = rec(ts=1200)
MPLS0["mpls"] = 16  # n_mpls == 0: label is junk
RECS = np.concatenate([RECS, np.array([MPLS0])])


EVAL = [
    ("host 198.18.0.1", [0, 4, 6, 8]),
    ("src host 198.18.0.2", [2]),
    ("dst host 198.18.0.2", [0, 4, 8, 9]),
    ("host 2001:db8::1", [1, 3]),
    ("src host 2001:db8::1", [1]),
    ("net 198.18.0.0/15", [0, 2, 4, 6, 8, 9]),
    ("net 198.18.0.0/16", [0, 2, 4, 6, 8, 9]),
    ("src net 198.18.0.0/16", [0, 2, 4, 6, 8]),
    ("dst net 10.0.0.0/8", [2]),
    ("net 198.18.0.0/31", [0, 4, 6, 8]),
    ("net 0.0.0.0/0", [0, 2, 4, 6, 8, 9]),
    ("net ::/0", [1, 3, 7]),
    ("net 2001:db8::/32", [1, 3]),
    ("net 2001:db8::2/128", [1, 3]),
    ("port 53", [0, 6]),
    ("src port 53", [6]),
    ("dst port 53", [0, 6]),
    ("port 80", []),  # no F_PORTS
    ("portrange 400-500", [1]),
    ("portrange 50000-65535", [1]),
    ("dst portrange 0-100", [0, 6]),
    ("udp", [0, 4, 6]),
    ("tcp", [1, 8]),
    ("ip proto 1", [2, 7]),
    ("ip proto 58", [3, 9]),
    ("icmp", [2]),
    ("icmp6", [3]),
    ("ip", [0, 2, 4, 6, 8, 9]),
    ("ip6", [1, 3, 7]),
    ("vlan 10", [5]),
    ("vlan 20", [5]),
    ("vlan 30", [6]),  # third tag of record 5 is not kept
    ("vlan 40", [10]),
    ("vlan 99", []),
    ("mpls 16", [6]),
    ("before 1970-01-01T00:00:00.000000500Z", [0, 1, 2, 3]),
    ("after 1970-01-01T00:00:00.000000500Z", [4, 5, 6, 7, 8, 9, 10, 11]),
    ("not ip and not ip6", [5, 10, 11]),
    ("udp or icmp and host 198.18.0.2", [0, 2, 4]),
    ("udp or (icmp and host 198.18.0.2)", [0, 2, 4, 6]),
    ("!udp && port 53", []),
    ("src and dst host 198.18.0.1", []),
]


@pytest.mark.parametrize("text,want", EVAL, ids=[e[0] for e in EVAL])
def test_eval_hand_built(text, want):
    m = q.eval_records(q.parse(text), RECS)
    assert m.dtype == bool and m.shape == (len(RECS),)
    assert list(np.flatnonzero(m)) == want


def test_eval_empty_and_extreme_times():
    empty = np.zeros(0, L.REC_DTYPE)
    assert q.eval_records(q.parse("tcp and not port 1"), empty).shape == (0,)
    r = np.zeros(3, L.REC_DTYPE)
    r["ts_ns"] = [0, 1, 2**64 - 1]
    assert list(q.eval_records(Before(0), r)) == [False] * 3
    assert list(q.eval_records(Before(-5), r)) == [False] * 3
    assert list(q.eval_records(After(-5), r)) == [True] * 3
    assert list(q.eval_records(After(2**64), r)) == [False] * 3
    assert list(q.eval_records(Before(2**64 + 5), r)) == [True] * 3
    assert list(q.eval_records(After(2**64 - 1), r)) == [False, False, True]


# a scalar reference: the rules written once more, one record at a time
def ref_match(node, r) -> bool:
    fl = int(r["flags"])
    if isinstance(node, (Host, Net)):
        v4 = len(node.addr) == 4
        if not fl & (L.F_IPV4 if v4 else L.F_IPV6):
            return False
        w = len(node.addr) * 8
        pfx = w if isinstance(node, Host) else node.prefix
        want = int.from_bytes(node.addr, "big") >> (w - pfx) if pfx else 0
        sides = {"src": ["src"], "dst": ["dst"], "any": ["src", "dst"]}[node.dir]
        for s in sides:
            v = int.from_bytes(bytes(r[s][: len(node.addr)]), "big")
            if (v >> (w - pfx) if pfx else 0) == want:
                return True
        return False
    if isinstance(node, Port):
        if not fl & L.F_PORTS:
            return False
        ps = {"src": [r["sport"]], "dst": [r["dport"]], "any": [r["sport"], r["dport"]]}[node.dir]
        return any(node.lo <= int(p) <= node.hi for p in ps)
    if isinstance(node, Proto):
        return bool(fl & (L.F_IPV4 | L.F_IPV6)) and int(r["proto"]) == node.proto
    if isinstance(node, Icmp):
        return bool(fl & L.F_IPV4) and int(r["proto"]) == 1
    if isinstance(node, Icmp6):
        return bool(fl & L.F_IPV6) and int(r["proto"]) == 58
    if isinstance(node, Family):
        return bool(fl & (L.F_IPV4 if node.v == 4 else L.F_IPV6))
    if isinstance(node, Vlan):
        return any(int(r["vlan"][i]) == node.vid for i in range(min(int(r["n_vlan"]), 2)))
    if isinstance(node, Mpls):
        return int(r["n_mpls"]) > 0 and int(r["mpls"]) == node.label
    if isinstance(node, Before):
        return int(r["ts_ns"]) < node.ts_ns
    if isinstance(node, After):
        return int(r["ts_ns"]) >= node.ts_ns
    if isinstance(node, And):
        return ref_match(node.a, r) and ref_match(node.b, r)
    if isinstance(node, Or):
        return ref_match(node.a, r) or ref_match(node.b, r)
    if isinstance(node, Not):
        return not ref_match(node.a, r)
    raise TypeError(node)


def test_eval_matches_scalar_reference():
    recs = rand_recs(600, seed=11)
    t_lo, t_hi = int(recs["ts_ns"][0]), int(recs["ts_ns"][-1])
    rng = random.Random(5)
    pool = q.QueryPool(hosts=("198.18.0.1", "198.18.0.5", "10.0.2.1", "2001:db8::3", "2001:db8::6"),
                       nets=("198.18.0.0/28", "198.18.0.4/30", "10.0.0.0/13", "2001:db8::/125",
                             "2001:db8::4/126", "0.0.0.0/0", "::/0"),
                       ports=(53, 80, 443, 1234, 40000, 65535, 0), protos=(1, 6, 17, 58, 47),
                       vlans=(10, 20, 30, 4095), mpls=(16, 1000, 1048575))
    hits = 0
    for i in range(120):
        node = q.random_ast(rng, pool, max_depth=3)
        if i % 3 == 0:  # add time clauses inside the data's range
            t = rng.randrange(t_lo, t_hi)
            node = And(node, Before(t)) if i % 2 else Or(After(t), node)
        got = q.eval_records(node, recs)
        want = np.array([ref_match(node, r) for r in recs])
        assert (got == want).all(), q.format(node)
        hits += int(got.sum())
    assert hits > 0


def test_eval_on_a_memmap(tmp_path):
    recs = rand_recs(100, seed=2)
    p = tmp_path / "x.rec"
    recs.tofile(p)
    mm = np.memmap(p, L.REC_DTYPE, mode="r")
    node = q.parse("udp or host 2001:db8::1 or net 198.18.0.0/29")
    assert (q.eval_records(node, mm) == q.eval_records(node, recs)).all()
    # a strided slice (not contiguous) gives the same answers as a copy
    assert (q.eval_records(node, mm[1::3]) == q.eval_records(node, recs[1::3].copy())).all()
    assert (q.eval_records(node, recs) == np.array([ref_match(node, r) for r in recs])).all()
    raw = np.fromfile(p, dtype="V80")  # untyped 80-byte records are read as sxdp_rec
    assert (q.eval_records(node, raw) == q.eval_records(node, recs)).all()
    with pytest.raises(TypeError):
        q.eval_records(node, np.zeros(3, "u8"))


# ---- time_bounds ------------------------------------------------------------------------
@pytest.mark.parametrize("node,want", [
    (TCP, (None, None)),
    (Before(10), (None, 10)),
    (After(10), (10, None)),
    (And(After(10), Before(20)), (10, 20)),
    (And(And(After(10), Before(20)), And(After(15), TCP)), (15, 20)),
    (Or(And(After(10), Before(20)), And(After(30), Before(40))), (10, 40)),
    (Or(Before(20), TCP), (None, None)),
    (Or(After(5), After(7)), (5, None)),
    (Not(Before(10)), (10, None)),
    (Not(After(10)), (None, 10)),
    (Not(Or(Before(10), After(20))), (10, 20)),
    (Not(And(After(10), Before(20))), (None, None)),
    (And(TCP, Not(Not(Before(3)))), (None, 3)),
    (And(After(20), Before(10)), (20, 10)),  # empty window: lo >= hi
])
def test_time_bounds(node, want):
    assert q.time_bounds(node) == want


@settings(max_examples=150, deadline=None)
@given(trees, st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40))
def test_time_bounds_is_conservative(node, stamps):
    """No packet outside [lo, hi) ever matches."""
    lo, hi = q.time_bounds(node)
    r = np.zeros(len(stamps), L.REC_DTYPE)
    r["ts_ns"] = stamps
    r["flags"] = L.F_IPV4 | L.F_PORTS
    m = q.eval_records(node, r)
    ts = np.array(stamps, dtype=object)
    for t, hit in zip(ts, m):
        if hit:
            assert lo is None or t >= lo
            assert hi is None or t < hi


# ---- to_pcap_filter against libpcap --------------------------------------------------------------
def test_pcap_text():
    f = q.to_pcap_filter
    assert f(q.parse("host 198.18.0.1")) == "ip host 198.18.0.1"
    assert f(q.parse("src host 2001:db8::1")) == "ip6 src host 2001:db8::1"
    assert f(q.parse("dst net 10.0.0.0/8")) == "ip dst net 10.0.0.0/8"
    assert f(q.parse("net ::/0")) == "ip6"
    assert f(q.parse("port 53")) == "(tcp port 53 or udp port 53)"
    assert f(q.parse("src portrange 1-9")) == "(tcp src portrange 1-9 or udp src portrange 1-9)"
    assert f(q.parse("tcp")) == "(ip proto 6 or ip6 protochain 6)"
    assert f(q.parse("icmp")) == "ip proto 1"
    assert f(q.parse("icmp6")) == "ip6 protochain 58"
    assert f(q.parse("not tcp and vlan 10")) == "(not (ip proto 6 or ip6 protochain 6) and vlan 10)"
    assert f(q.parse("mpls 16")) == "mpls 16"
    with pytest.raises(QueryError, match="no tcpdump"):
        f(q.parse("tcp and after 1m ago"))
    assert len(q.KNOWN_DIFFERENCES) >= 5 and all(isinstance(s, str) for s in q.KNOWN_DIFFERENCES)


def _oracle_frames():
    """Untagged Ethernet frames without IPv6 extension headers (where
    to_pcap_filter is exact, see KNOWN_DIFFERENCES), from the corpus builders."""
    from tests.corpus import frames as F

    v4 = [bytes([198, 18, 0, i]) for i in (1, 2, 3, 5)] + [bytes([10, 0, 1, 1]), bytes([198, 19, 255, 254])]
    v6 = [A(s) for s in ("2001:db8::1", "2001:db8::2", "2001:db8::5", "2001:db9::1")]
    ports = [53, 80, 443, 1234, 40000, 0, 65535]
    rng = random.Random(9)
    out = []
    for i in range(160):
        kind = i % 8
        sp, dp = rng.choice(ports), rng.choice(ports)
        if kind < 5:
            s, d = rng.choice(v4), rng.choice(v4)
            l4 = [(6, F.tcp(sp, dp)), (17, F.udp(sp, dp)), (1, F.icmp()), (47, bytes(8)), (58, F.icmp6())][kind]
            frag = {}
            if i % 16 == 3:
                frag = {"frag_off": 100}  # non-first fragment: no ports in either
            elif i % 16 == 11:
                frag = {"mf": True}  # first fragment: ports in both
            opts = bytes(8) if i % 13 == 0 else b""
            out.append(F.pad(F.eth(0x0800) + F.ipv4(l4[0], l4[1], s, d, options=opts, **frag)))
        elif kind < 7:
            s, d = rng.choice(v6), rng.choice(v6)
            nh, pl = rng.choice([(6, F.tcp(sp, dp)), (17, F.udp(sp, dp)), (58, F.icmp6()), (1, F.icmp())])
            out.append(F.pad(F.eth(0x86DD) + F.ipv6(nh, pl, s, d)))
        elif i % 16 == 7:
            out.append(F.pad(F.eth(0x0806) + F.ARP))
        else:
            out.append(F.pad(F.eth(0x88CC, dst=F.LLDP_MAC) + F.LLDP))
    return out


def _recs_of(frames) -> np.ndarray:
    from stenoxdp.indexer.parse import parse_frame

    r = np.zeros(len(frames), L.REC_DTYPE)
    for i, fr in enumerate(frames):
        d = parse_frame(fr)
        r[i]["flags"], r[i]["proto"] = d["flags"], d["ip_proto"]
        r[i]["sport"], r[i]["dport"] = d["sport"], d["dport"]
        r[i]["src"][: len(d["src"])] = np.frombuffer(d["src"], np.uint8)
        r[i]["dst"][: len(d["dst"])] = np.frombuffer(d["dst"], np.uint8)
        r[i]["n_vlan"], r[i]["n_mpls"], r[i]["mpls"] = d["n_vlan"], d["n_mpls"], d["mpls"]
        r[i]["vlan"][:] = d["vlan"]
        r[i]["ts_ns"] = i
    return r


class LibpcapFilter:
    """libpcap's own compiler and userland interpreter (what `tcpdump -r`
    runs). Not cbpf.compile_expr: that one refuses programs XDP cannot run,
    and `ip6 protochain` compiles to a backward jump, which only userland
    libpcap executes."""

    def __init__(self, expr: str):
        import ctypes

        from stenoxdp import cbpf

        self.lib = lib = cbpf.libpcap()
        self.ct = ctypes
        self.hdr = cbpf._PktHdr()
        p = lib.pcap_open_dead(cbpf.DLT_EN10MB, cbpf.SNAPLEN)
        try:
            self.prog = cbpf._BpfProgram()
            if lib.pcap_compile(p, ctypes.byref(self.prog), expr.encode(), 1, cbpf.PCAP_NETMASK_UNKNOWN) != 0:
                raise FilterError(lib.pcap_geterr(p).decode())
        finally:
            lib.pcap_close(p)

    def __call__(self, frame: bytes) -> bool:
        self.hdr.caplen = self.hdr.len = len(frame)
        return self.lib.pcap_offline_filter(self.ct.byref(self.prog), self.ct.byref(self.hdr), frame) != 0

    def close(self):
        self.lib.pcap_freecode(self.ct.byref(self.prog))


def test_pcap_filter_agrees_with_libpcap():
    """random queries (kinds exact on this traffic): our eval_records on the
    shared parser's records == libpcap's own verdict on the frames for
    to_pcap_filter(query)."""
    frames = _oracle_frames()
    recs = _recs_of(frames)
    pool = q.QueryPool(hosts=("198.18.0.1", "198.18.0.2", "10.0.1.1", "2001:db8::1", "2001:db8::5"),
                       nets=("198.18.0.0/15", "198.18.0.0/30", "198.18.0.0/24", "10.0.0.0/8", "0.0.0.0/0",
                             "2001:db8::/32", "2001:db8::4/126", "::/0"),
                       ports=(53, 80, 443, 1234, 40000, 0, 65535), protos=(1, 6, 17, 47, 58),
                       kinds=q.PCAP_EXACT_KINDS)
    rng = random.Random(2024)
    nonempty = 0
    for _ in range(150):
        text = q.random_query(rng, pool, max_depth=3)
        node = q.parse(text)
        expr = q.to_pcap_filter(node)
        try:
            match = LibpcapFilter(expr)
        except FilterError as e:  # libpcap's optimiser proved it can never match
            assert "rejects all packets" in str(e)
            want = np.zeros(len(frames), bool)
        else:
            want = np.array([match(fr) for fr in frames])
            match.close()
        got = q.eval_records(node, recs)
        bad = np.flatnonzero(got != want)
        assert len(bad) == 0, f"{text!r} -> {expr!r}: differ on frames {bad.tolist()}"
        nonempty += bool(want.any()) and not want.all()
    assert nonempty > 50  # the queries really discriminate


def test_pcap_filter_compiles_with_vlan_and_mpls():
    rng = random.Random(4)
    for _ in range(40):
        expr = q.to_pcap_filter(q.parse(q.random_query(rng)))
        try:
            LibpcapFilter(expr).close()
        except FilterError as e:  # see KNOWN_DIFFERENCES
            assert "rejects all packets" in str(e) or "no VLAN match after MPLS" in str(e)


# ---- long and deep queries ------------------------------------------------------------------
def test_long_host_list_is_balanced():
    hosts = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    text = " or ".join(f"host {h}" for h in hosts)
    node = q.parse(text)
    assert q.depth(node) <= 12  # not 1000: consumers recurse
    r = np.zeros(4, L.REC_DTYPE)
    r["flags"] = L.F_IPV4
    for i, h in enumerate(["198.18.0.1", "198.18.3.250", "198.18.4.1", "10.0.0.1"]):
        r["dst"][i, :4] = np.frombuffer(A(h), np.uint8)
    assert list(q.eval_records(node, r)) == [True, True, False, False]
    assert q.format(node).count("host") == 1000
    assert (q.eval_records(q.parse(q.format(node)), r) == q.eval_records(node, r)).all()
    # a short run keeps Stenographer's left-to-right shape
    assert q.parse("tcp or udp or icmp") == Or(Or(TCP, UDP), Icmp())


def test_nesting_limits():
    assert q.parse("(" * 64 + "tcp" + ")" * 64) == TCP
    assert q.parse("not " * 64 + "tcp") is not None
    with pytest.raises(QueryError, match="more than 64 levels") as ei:
        q.parse("(" * 65 + "tcp" + ")" * 65)
    assert ei.value.pos == 64
    with pytest.raises(QueryError, match="more than 64 levels"):
        q.parse("! " * 65 + "tcp")
    alt = " ".join(("or" if i % 2 else "and") + " port 1" for i in range(300))
    with pytest.raises(QueryError, match="levels deep"):
        q.parse("port 1 " + alt)


def test_doc_examples_parse():
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "query-language.md").read_text()
    examples = re.findall(r"stenoctl query '([^']+)'", doc)
    assert len(examples) >= 3
    for text in examples:
        q.parse(text, now_ns=NOW)
    inline = ["tcp or udp and port 53", "tcp or (udp and port 53)", "not tcp and port 53", "ip proto tcp",
              "45m ago", "45 m ago", "3h ago", "30s ago", "2d ago", "1h30m ago", "2015-01-01T13:14:15+01:00",
              "2015-01-01T13:14:15.123456789Z", "net 10.0.0.1/8", "host ::ffff:198.18.0.1"]
    for text in inline:
        assert f"`{text}`" in doc, text
        if text[0].isdigit():
            text = "after " + text
        if text == "net 10.0.0.1/8":
            with pytest.raises(QueryError, match="non-network bits set"):
                q.parse(text)
        else:
            q.parse(text, now_ns=NOW)

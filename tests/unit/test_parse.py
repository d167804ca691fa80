"""The pure-Python reference parser (stenoxdp.indexer.parse) on the corpus,
against values written by hand for every frame (offsets counted from the
builders in tests/corpus/frames.py)."""
from __future__ import annotations

import pytest

from stenoxdp import layout as L
from stenoxdp.indexer.parse import parse_frame
from tests.corpus.frames import BY_NAME, FRAMES, V4A, V4B, V6A, V6B

V4, V6, P, FR, NF, M, L4 = L.F_IPV4, L.F_IPV6, L.F_PORTS, L.F_FRAG, L.F_NONFIRST_FRAG, L.F_MALFORMED, L.F_L4
TCP4 = V4 | P | L4
TCP6 = V6 | P | L4

# name: (flags, l3_off, l4_off, ip_proto, n_vlan, vlan, n_mpls, mpls, ethertype, sport, dport)
EXPECT = {
    "tcp4_60": (TCP4, 14, 34, 6, 0, [0, 0], 0, 0, 0x0800, 40000, 80),
    "tcp4_opts_doff8": (TCP4, 14, 34, 6, 0, [0, 0], 0, 0, 0x0800, 40000, 443),
    "udp4_1514": (TCP4, 14, 34, 17, 0, [0, 0], 0, 0, 0x0800, 5353, 5353),
    "udp4_512": (TCP4, 14, 34, 17, 0, [0, 0], 0, 0, 0x0800, 1000, 2000),
    "icmp4_echo_98": (V4 | L4, 14, 34, 1, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_options_tcp": (TCP4, 14, 46, 6, 0, [0, 0], 0, 0, 0x0800, 1234, 22),
    "ipv4_ihl4_bad": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_ihl15_beyond_frame": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_trunc_header": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_bad_version": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_first_frag_udp": (TCP4 | FR, 14, 34, 17, 0, [0, 0], 0, 0, 0x0800, 1111, 2222),
    "ipv4_nonfirst_frag": (V4 | FR | NF, 14, 0, 17, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_last_frag": (V4 | FR | NF, 14, 0, 6, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_df_tcp": (TCP4, 14, 34, 6, 0, [0, 0], 0, 0, 0x0800, 5000, 6000),
    "tcp4_trunc_l4": (V4 | M, 14, 0, 6, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "udp4_trunc_l4": (V4 | M, 14, 0, 17, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "icmp4_trunc_l4": (V4 | M, 14, 0, 1, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_gre": (V4, 14, 0, 47, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_sctp": (V4, 14, 0, 132, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "ipv4_proto58_not_icmp6": (V4, 14, 0, 58, 0, [0, 0], 0, 0, 0x0800, 0, 0),
    "eth_padding_udp4": (TCP4, 14, 34, 17, 0, [0, 0], 0, 0, 0x0800, 7, 9),
    "tcp6": (TCP6, 14, 54, 6, 0, [0, 0], 0, 0, 0x86DD, 40000, 443),
    "udp6_1514": (TCP6, 14, 54, 17, 0, [0, 0], 0, 0, 0x86DD, 4000, 4001),
    "icmp6_echo": (V6 | L4, 14, 54, 58, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_hbh_udp": (TCP6, 14, 62, 17, 0, [0, 0], 0, 0, 0x86DD, 546, 547),
    "ipv6_routing_tcp": (TCP6, 14, 78, 6, 0, [0, 0], 0, 0, 0x86DD, 1, 2),
    "ipv6_dstopts_udp": (TCP6, 14, 70, 17, 0, [0, 0], 0, 0, 0x86DD, 3, 4),
    "ipv6_mobility": (V6, 14, 0, 59, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_chain_tcp": (TCP6 | FR, 14, 86, 6, 0, [0, 0], 0, 0, 0x86DD, 8080, 9090),
    "ipv6_frag_first_udp": (TCP6 | FR, 14, 62, 17, 0, [0, 0], 0, 0, 0x86DD, 5000, 5001),
    "ipv6_frag_nonfirst": (V6 | FR | NF, 14, 0, 17, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_frag_atomic": (TCP6, 14, 62, 17, 0, [0, 0], 0, 0, 0x86DD, 6000, 6001),
    "ipv6_hbh_frag_nonfirst": (V6 | FR | NF, 14, 0, 6, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_too_many_ext": (V6 | M, 14, 0, 60, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_ext_trunc": (V6 | M, 14, 0, 0, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_ah": (V6, 14, 0, 51, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_esp": (V6, 14, 0, 50, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_no_next": (V6, 14, 0, 59, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_trunc_header": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "ipv6_bad_version": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "tcp6_trunc_l4": (V6 | M, 14, 0, 6, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "icmp6_proto1_not_icmp": (V6, 14, 0, 1, 0, [0, 0], 0, 0, 0x86DD, 0, 0),
    "vlan_tcp4": (TCP4, 18, 38, 6, 1, [100, 0], 0, 0, 0x0800, 1000, 80),
    "vlan_prio_tcp4": (TCP4, 18, 38, 6, 1, [42, 0], 0, 0, 0x0800, 1000, 80),
    "qinq_udp4": (TCP4, 22, 42, 17, 2, [10, 20], 0, 0, 0x0800, 53, 1053),
    "vlan_9x00_triple_udp6": (TCP6, 26, 66, 17, 3, [1, 2], 0, 0, 0x86DD, 9, 10),
    "vlan_8_tags_tcp4": (TCP4, 46, 66, 6, 8, [1, 2], 0, 0, 0x0800, 11, 12),
    "vlan_9_tags_too_many": (M, 0, 0, 0, 8, [1, 2], 0, 0, 0x8100, 0, 0),
    "vlan_trunc": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x8100, 0, 0),
    "vlan_arp": (0, 0, 0, 0, 1, [7, 0], 0, 0, 0x0806, 0, 0),
    "mpls1_udp4": (TCP4, 18, 38, 17, 0, [0, 0], 1, 1000, 0x0800, 10, 20),
    "mpls2_tcp6": (TCP6, 22, 62, 6, 0, [0, 0], 2, 16, 0x86DD, 30, 40),
    "mpls_mc_8848_udp4": (TCP4, 18, 38, 17, 0, [0, 0], 1, 0xFFFFF, 0x0800, 1, 2),
    "mpls_pw_eth_tcp4": (TCP4, 36, 56, 6, 0, [0, 0], 1, 100, 0x0800, 7000, 7001),
    "mpls_pw_vlan_udp4": (TCP4, 44, 64, 17, 1, [300, 0], 2, 200, 0x0800, 8, 9),
    "vlan_mpls_pw_vlan_tcp6": (TCP6, 48, 88, 6, 3, [50, 60], 1, 5, 0x86DD, 80, 81),
    "mpls_no_bos_9_labels": (M, 0, 0, 0, 0, [0, 0], 8, 1, 0x8847, 0, 0),
    "mpls_8_labels_udp4": (TCP4, 46, 66, 17, 0, [0, 0], 8, 21, 0x0800, 5, 6),
    "mpls_unknown_nibble": (0, 0, 0, 0, 0, [0, 0], 1, 300, 0x8847, 0, 0),
    "mpls_pw_twice": (M, 0, 0, 0, 0, [0, 0], 2, 1, 0x8847, 0, 0),
    "mpls_trunc_label": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x8847, 0, 0),
    "mpls_bos_then_nothing": (M, 0, 0, 0, 0, [0, 0], 1, 1, 0x8847, 0, 0),
    "mpls_bad_ihl_ipv4": (M, 0, 0, 0, 0, [0, 0], 1, 9, 0x0800, 0, 0),
    "arp_request": (0, 0, 0, 0, 0, [0, 0], 0, 0, 0x0806, 0, 0),
    "lldp": (0, 0, 0, 0, 0, [0, 0], 0, 0, 0x88CC, 0, 0),
    "runt_10": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0, 0, 0),
    "eth_only_14": (M, 0, 0, 0, 0, [0, 0], 0, 0, 0x0800, 0, 0),
}
FIELDS = ("flags", "l3_off", "l4_off", "ip_proto", "n_vlan", "vlan", "n_mpls", "mpls", "ethertype", "sport", "dport")


def test_every_frame_has_an_expectation():
    assert set(EXPECT) == set(BY_NAME)


@pytest.mark.parametrize("name", [n for n, _ in FRAMES])
def test_corpus_frame(name):
    got = parse_frame(BY_NAME[name])
    want = dict(zip(FIELDS, EXPECT[name]))
    assert {k: got[k] for k in FIELDS} == want


def test_addresses():
    d = parse_frame(BY_NAME["qinq_udp4"])
    assert (d["src"], d["dst"]) == (V4A, V4B)
    d = parse_frame(BY_NAME["vlan_mpls_pw_vlan_tcp6"])
    assert (d["src"], d["dst"]) == (V6A, V6B)
    d = parse_frame(BY_NAME["arp_request"])
    assert (d["src"], d["dst"]) == (b"", b"")


def test_nonfirst_fragment_has_no_ports():
    """Stenographer reads payload bytes as ports here; we must not."""
    for name in ("ipv4_nonfirst_frag", "ipv6_frag_nonfirst"):
        d = parse_frame(BY_NAME[name])
        assert d["flags"] & L.F_NONFIRST_FRAG and not d["flags"] & L.F_PORTS
        assert (d["sport"], d["dport"], d["l4_off"]) == (0, 0, 0)


@pytest.mark.parametrize("name", ["udp6_1514", "vlan_mpls_pw_vlan_tcp6", "ipv6_chain_tcp", "qinq_udp4"])
def test_every_truncation_is_safe(name):
    """Cut a frame at every length: never an exception, and the result only
    loses information (malformed, or the same as the whole frame)."""
    f = BY_NAME[name]
    whole = parse_frame(f)
    for n in range(0, min(len(f), 160)):
        d = parse_frame(f[:n])
        if d["flags"] & L.F_MALFORMED:
            assert d["l4_off"] == 0
        else:
            assert d["l4_off"] in (0, whole["l4_off"])

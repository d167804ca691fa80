"""A corpus of hand-made Ethernet frames, valid and malformed, as bytes.

    from tests.corpus.frames import FRAMES, BY_NAME   # [(name, bytes)], {name: bytes}

Used by tests/unit/test_parse.py (expected values written by hand for each
frame), tests/unit/test_native.py and tests/kernel/test_xdp_testrun.py (the
same frames through the Python parser, the gcc build and the XDP program).
Addresses are from 198.18.0.0/15 and 2001:db8::/32. Every frame is built
explicitly here (no scapy), so the bytes are what the names say.
"""
from __future__ import annotations

import struct

MAC_DST = bytes.fromhex("020000000002")
MAC_SRC = bytes.fromhex("020000000001")
V4A = bytes([198, 18, 0, 1])
V4B = bytes([198, 18, 0, 2])
V6A = bytes.fromhex("20010db8000000000000000000000001")
V6B = bytes.fromhex("20010db8000000000000000000000002")


# ---------------------------------------------------------------- builders

def eth(et: int, dst: bytes = MAC_DST, src: bytes = MAC_SRC) -> bytes:
    return dst + src + struct.pack(">H", et)


def tag(tci: int, next_et: int) -> bytes:
    """A VLAN tag's body (the TPID is the previous ethertype): TCI + next ethertype."""
    return struct.pack(">HH", tci, next_et)


def vlan_eth(tags: list[tuple[int, int]], inner_et: int) -> bytes:
    """Ethernet with VLAN tags [(tpid, vid), ...] outermost first, then inner_et."""
    if not tags:
        return eth(inner_et)
    out = eth(tags[0][0])
    for i, (_tpid, vid) in enumerate(tags):
        nxt = tags[i + 1][0] if i + 1 < len(tags) else inner_et
        out += tag(vid, nxt)
    return out


def mpls(labels: list[int], bos_last: bool = True) -> bytes:
    out = b""
    for i, lab in enumerate(labels):
        bos = 1 if (bos_last and i == len(labels) - 1) else 0
        out += struct.pack(">I", (lab << 12) | (bos << 8) | 64)
    return out


def ipv4(proto: int, payload: bytes, src: bytes = V4A, dst: bytes = V4B, options: bytes = b"",
         frag_off: int = 0, mf: bool = False, df: bool = False, ihl: int | None = None, version: int = 4) -> bytes:
    assert len(options) % 4 == 0
    if ihl is None:
        ihl = 5 + len(options) // 4
    flags_frag = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_off & 0x1FFF)
    total = 20 + len(options) + len(payload)
    hdr = struct.pack(">BBHHHBBH4s4s", (version << 4) | ihl, 0, total, 0x1234, flags_frag, 64, proto, 0, src, dst)
    return hdr + options + payload


def ipv6(nh: int, payload: bytes, src: bytes = V6A, dst: bytes = V6B) -> bytes:
    return struct.pack(">IHBB", 0x60000000, len(payload), nh, 64) + src + dst + payload


def ext(nh: int, length8: int = 0) -> bytes:
    """A generic IPv6 extension header (hop-by-hop/routing/dest-opts/mobility):
    next header, hdr ext len, padding; (length8 + 1) * 8 bytes."""
    body = bytes([nh, length8]) + bytes(6 + 8 * length8)
    return body


def frag6(nh: int, offset8: int = 0, m: bool = False) -> bytes:
    return struct.pack(">BBHI", nh, 0, (offset8 << 3) | (1 if m else 0), 0xABCD)


def tcp(sport: int = 40000, dport: int = 80, payload: bytes = b"", doff: int = 5) -> bytes:
    opts = bytes((doff - 5) * 4)
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, doff << 4, 0x02, 65535, 0, 0) + opts + payload


def udp(sport: int = 40001, dport: int = 53, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(payload: bytes = b"") -> bytes:
    return struct.pack(">BBHHH", 8, 0, 0, 1, 1) + payload


def icmp6(payload: bytes = b"") -> bytes:
    return struct.pack(">BBHHH", 128, 0, 0, 1, 1) + payload


def pad(frame: bytes, size: int = 60) -> bytes:
    """Ethernet minimum (60 without FCS) or an exact size."""
    return frame + bytes(max(0, size - len(frame)))


def sized(frame_without_payload_fn, size: int) -> bytes:
    """Build a frame of exactly ``size`` bytes: fn(payload) with the payload grown to fit."""
    base = frame_without_payload_fn(b"")
    return frame_without_payload_fn(bytes((i * 7) & 0xFF for i in range(size - len(base))))


ARP = bytes.fromhex("0001080006040001") + MAC_SRC + V4A + bytes(6) + V4B
LLDP = bytes.fromhex("0207046c3be5a1b2c3") + bytes.fromhex("040703020000000001") + bytes.fromhex("06020078") + bytes(2)
LLDP_MAC = bytes.fromhex("0180c200000e")


# ---------------------------------------------------------------- the corpus

def _build() -> list[tuple[str, bytes]]:
    F: list[tuple[str, bytes]] = []

    def add(name, b):
        F.append((name, bytes(b)))

    # IPv4
    add("tcp4_60", pad(eth(0x0800) + ipv4(6, tcp(40000, 80))))
    add("tcp4_opts_doff8", pad(eth(0x0800) + ipv4(6, tcp(40000, 443, doff=8))))
    add("udp4_1514", sized(lambda p: eth(0x0800) + ipv4(17, udp(5353, 5353, p)), 1514))
    add("udp4_512", sized(lambda p: eth(0x0800) + ipv4(17, udp(1000, 2000, p)), 512))
    add("icmp4_echo_98", sized(lambda p: eth(0x0800) + ipv4(1, icmp(p)), 98))
    add("ipv4_options_tcp", pad(eth(0x0800) + ipv4(6, tcp(1234, 22), options=bytes([0x94, 4, 0, 0]) + bytes(8))))
    add("ipv4_ihl4_bad", pad(eth(0x0800) + ipv4(6, tcp(), ihl=4)))
    add("ipv4_ihl15_beyond_frame", eth(0x0800) + ipv4(6, tcp(), ihl=15))
    add("ipv4_trunc_header", eth(0x0800) + ipv4(6, tcp())[:10])
    add("ipv4_bad_version", pad(eth(0x0800) + ipv4(6, tcp(), version=6)))
    add("ipv4_first_frag_udp", pad(eth(0x0800) + ipv4(17, udp(1111, 2222, bytes(32)), mf=True)))
    add("ipv4_nonfirst_frag", pad(eth(0x0800) + ipv4(17, bytes([0x11, 0x22, 0x33, 0x44]) + bytes(28), frag_off=185, mf=True)))
    add("ipv4_last_frag", pad(eth(0x0800) + ipv4(6, bytes(40), frag_off=370)))
    add("ipv4_df_tcp", pad(eth(0x0800) + ipv4(6, tcp(5000, 6000), df=True)))
    add("tcp4_trunc_l4", eth(0x0800) + ipv4(6, tcp(1, 2)[:10]))
    add("udp4_trunc_l4", eth(0x0800) + ipv4(17, udp(1, 2)[:6]))
    add("icmp4_trunc_l4", eth(0x0800) + ipv4(1, icmp()[:4]))
    add("ipv4_gre", pad(eth(0x0800) + ipv4(47, bytes(24))))
    add("ipv4_sctp", pad(eth(0x0800) + ipv4(132, bytes(28))))
    add("ipv4_proto58_not_icmp6", pad(eth(0x0800) + ipv4(58, icmp6())))
    add("eth_padding_udp4", eth(0x0800) + ipv4(17, udp(7, 9)) + bytes(18))

    # IPv6
    add("tcp6", eth(0x86DD) + ipv6(6, tcp(40000, 443)))
    add("udp6_1514", sized(lambda p: eth(0x86DD) + ipv6(17, udp(4000, 4001, p)), 1514))
    add("icmp6_echo", eth(0x86DD) + ipv6(58, icmp6(bytes(56))))
    add("ipv6_hbh_udp", eth(0x86DD) + ipv6(0, ext(17) + udp(546, 547)))
    add("ipv6_routing_tcp", eth(0x86DD) + ipv6(43, ext(6, 2) + tcp(1, 2)))
    add("ipv6_dstopts_udp", eth(0x86DD) + ipv6(60, ext(17, 1) + udp(3, 4)))
    add("ipv6_mobility", eth(0x86DD) + ipv6(135, ext(59, 1)))
    add("ipv6_chain_tcp", eth(0x86DD) + ipv6(0, ext(60) + ext(43) + ext(44) + frag6(6, 0, m=True) + tcp(8080, 9090)))
    add("ipv6_frag_first_udp", eth(0x86DD) + ipv6(44, frag6(17, 0, m=True) + udp(5000, 5001, bytes(16))))
    add("ipv6_frag_nonfirst", eth(0x86DD) + ipv6(44, frag6(17, 100, m=True) + bytes([0xAA, 0xBB, 0xCC, 0xDD]) + bytes(20)))
    add("ipv6_frag_atomic", eth(0x86DD) + ipv6(44, frag6(17, 0, m=False) + udp(6000, 6001)))
    add("ipv6_hbh_frag_nonfirst", eth(0x86DD) + ipv6(0, ext(44) + frag6(6, 7) + bytes(24)))
    add("ipv6_too_many_ext", eth(0x86DD) + ipv6(60, b"".join(ext(60) for _ in range(8)) + ext(17) + udp()))
    add("ipv6_ext_trunc", eth(0x86DD) + ipv6(0, ext(17)[:5]))
    add("ipv6_ah", eth(0x86DD) + ipv6(51, bytes([6, 4]) + bytes(22) + tcp()))
    add("ipv6_esp", eth(0x86DD) + ipv6(50, bytes(32)))
    add("ipv6_no_next", eth(0x86DD) + ipv6(59, b""))
    add("ipv6_trunc_header", eth(0x86DD) + ipv6(6, tcp())[:30])
    add("ipv6_bad_version", eth(0x86DD) + struct.pack(">I", 0x40000000) + ipv6(6, tcp())[4:])
    add("tcp6_trunc_l4", eth(0x86DD) + ipv6(6, tcp()[:19]))
    add("icmp6_proto1_not_icmp", eth(0x86DD) + ipv6(1, icmp()))

    # VLAN / QinQ
    add("vlan_tcp4", pad(vlan_eth([(0x8100, 100)], 0x0800) + ipv4(6, tcp(1000, 80))))
    add("vlan_prio_tcp4", pad(vlan_eth([(0x8100, 0xE000 | 42)], 0x0800) + ipv4(6, tcp(1000, 80))))
    add("qinq_udp4", pad(vlan_eth([(0x88A8, 10), (0x8100, 20)], 0x0800) + ipv4(17, udp(53, 1053))))
    add("vlan_9x00_triple_udp6", vlan_eth([(0x9100, 1), (0x9200, 2), (0x9300, 3)], 0x86DD) + ipv6(17, udp(9, 10)))
    add("vlan_8_tags_tcp4", pad(vlan_eth([(0x8100, i + 1) for i in range(8)], 0x0800) + ipv4(6, tcp(11, 12))))
    add("vlan_9_tags_too_many", pad(vlan_eth([(0x8100, i + 1) for i in range(9)], 0x0800) + ipv4(6, tcp())))
    add("vlan_trunc", eth(0x8100) + bytes([0, 5]))
    add("vlan_arp", pad(vlan_eth([(0x8100, 7)], 0x0806) + ARP))

    # MPLS
    add("mpls1_udp4", pad(eth(0x8847) + mpls([1000]) + ipv4(17, udp(10, 20))))
    add("mpls2_tcp6", eth(0x8847) + mpls([16, 17]) + ipv6(6, tcp(30, 40)))
    add("mpls_mc_8848_udp4", pad(eth(0x8848) + mpls([0xFFFFF]) + ipv4(17, udp(1, 2))))
    add("mpls_pw_eth_tcp4", eth(0x8847) + mpls([100]) + bytes(4) + eth(0x0800) + ipv4(6, tcp(7000, 7001)))
    add("mpls_pw_vlan_udp4", eth(0x8847) + mpls([200, 201]) + bytes(4) + vlan_eth([(0x8100, 300)], 0x0800) + ipv4(17, udp(8, 9)))
    add("vlan_mpls_pw_vlan_tcp6", vlan_eth([(0x8100, 50)], 0x8847) + mpls([5]) + bytes(4)
        + vlan_eth([(0x88A8, 60), (0x8100, 70)], 0x86DD) + ipv6(6, tcp(80, 81)))
    add("mpls_no_bos_9_labels", pad(eth(0x8847) + mpls(list(range(1, 10)), bos_last=False) + ipv4(6, tcp())))
    add("mpls_8_labels_udp4", pad(eth(0x8847) + mpls(list(range(21, 29))) + ipv4(17, udp(5, 6))))
    add("mpls_unknown_nibble", pad(eth(0x8847) + mpls([300]) + bytes([0x10]) + bytes(30)))
    add("mpls_pw_twice", pad(eth(0x8847) + mpls([1]) + bytes(4) + eth(0x8847) + mpls([2]) + bytes(4) + eth(0x0800) + ipv4(6, tcp())))
    add("mpls_trunc_label", eth(0x8847) + mpls([1])[:3])
    add("mpls_bos_then_nothing", eth(0x8847) + mpls([1]))
    add("mpls_bad_ihl_ipv4", pad(eth(0x8847) + mpls([9]) + ipv4(6, tcp(), ihl=3)))

    # non-IP and runts
    add("arp_request", pad(eth(0x0806, dst=b"\xff" * 6) + ARP))
    add("lldp", pad(eth(0x88CC, dst=LLDP_MAC) + LLDP))
    add("runt_10", bytes(10))
    add("eth_only_14", eth(0x0800))
    return F


FRAMES: list[tuple[str, bytes]] = _build()
BY_NAME: dict[str, bytes] = dict(FRAMES)
assert len(BY_NAME) == len(FRAMES), "duplicate frame names"

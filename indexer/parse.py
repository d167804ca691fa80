"""Pure-Python reference twin of bpf/parse.h (sxdp_parse).

Not on any hot path: the tests run the corpus through this, through the native
helper (gcc build of parse.h) and through the XDP program (BPF_PROG_TEST_RUN)
and require the same answers. Keep the two in step: same rules, same order of
checks, same flags (see the comment at the top of bpf/parse.h).
"""
from __future__ import annotations

from stenoxdp import layout as L

MAX_ENCAP = 2  # SXDP_MAX_ENCAP
MAX_HDR_OFF = 0x7FFF  # SXDP_MAX_HDR_OFF
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200, 0x9300))
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_MPLS = frozenset((0x8847, 0x8848))
IP6_EXT_SKIP = frozenset((0, 43, 60, 135))  # hop-by-hop, routing, dest opts, mobility
IP6_FRAG = 44


class _Stop(Exception):
    pass


def parse_frame(frame: bytes) -> dict:
    """The parse summary of one Ethernet frame, as sxdp_parse computes it.

    Keys: l3_off, l4_off, ip_proto, flags, n_vlan, n_mpls, vlan (2 ids,
    outermost first, 0 when absent), mpls (first label), ethertype (innermost,
    what sxdp_parse returns), and for convenience src/dst (bytes: 4 for IPv4,
    16 for IPv6, b"" without IP) and sport/dport (0 unless F_PORTS)."""
    b = bytes(frame)
    n = len(b)
    st = {"flags": 0, "proto": 0, "l3": 0, "l4": 0, "n_vlan": 0, "n_mpls": 0, "vlan": [0, 0], "mpls": 0, "et": 0}

    def bad():
        st["flags"] |= L.F_MALFORMED
        raise _Stop

    def rebase(off):
        if off > MAX_HDR_OFF:
            bad()

    def rd16(o):
        return (b[o] << 8) | b[o + 1]

    try:
        off = 0
        et = 0
        for enc in range(MAX_ENCAP):
            again = False
            rebase(off)
            if off + 14 > n:
                bad()
            et = rd16(off + 12)
            st["et"] = et
            off += 14
            for _ in range(L.MAX_VLAN):
                if et not in VLAN_TPIDS:
                    break
                if off + 4 > n:
                    bad()
                if st["n_vlan"] < L.META_VLANS:
                    st["vlan"][st["n_vlan"]] = rd16(off) & 0x0FFF
                st["n_vlan"] += 1
                et = rd16(off + 2)
                st["et"] = et
                off += 4
            if et in VLAN_TPIDS:
                bad()
            if et in ETH_P_MPLS:
                bos = False
                for _ in range(L.MAX_MPLS):
                    if off + 4 > n:
                        bad()
                    lse = int.from_bytes(b[off:off + 4], "big")
                    if st["n_mpls"] == 0:
                        st["mpls"] = lse >> 12
                    st["n_mpls"] += 1
                    off += 4
                    if lse & 0x100:
                        bos = True
                        break
                if not bos:
                    bad()
                if off + 1 > n:
                    bad()
                nib = b[off] >> 4
                if nib == 4:
                    et = ETH_P_IP
                elif nib == 6:
                    et = ETH_P_IPV6
                elif nib == 0:
                    if enc + 1 >= MAX_ENCAP:
                        bad()
                    off += 4
                    again = True
                else:
                    raise _Stop
                st["et"] = et
            if not again:
                break

        rebase(off)
        if et == ETH_P_IP:
            if off + 20 > n or (b[off] >> 4) != 4:
                bad()
            ihl = (b[off] & 0x0F) * 4
            if ihl < 20 or off + ihl > n:
                bad()
            st["flags"] |= L.F_IPV4
            st["l3"] = off
            st["proto"] = b[off + 9]
            frag = rd16(off + 6)
            if frag & 0x3FFF:
                st["flags"] |= L.F_FRAG
            if frag & 0x1FFF:
                st["flags"] |= L.F_NONFIRST_FRAG
                raise _Stop
            off += ihl
        elif et == ETH_P_IPV6:
            if off + 40 > n or (b[off] >> 4) != 6:
                bad()
            st["flags"] |= L.F_IPV6
            st["l3"] = off
            nh = b[off + 6]
            st["proto"] = nh
            off += 40
            done = False
            for _ in range(L.MAX_IP6_EXT):
                rebase(off)
                if nh in IP6_EXT_SKIP:
                    if off + 8 > n:
                        bad()
                    nh = b[off]
                    st["proto"] = nh
                    off += (b[off + 1] + 1) * 8
                elif nh == IP6_FRAG:
                    if off + 8 > n:
                        bad()
                    nh = b[off]
                    st["proto"] = nh
                    fo = rd16(off + 2)
                    if fo & 0xFFF9:
                        st["flags"] |= L.F_FRAG
                    if fo & 0xFFF8:
                        st["flags"] |= L.F_NONFIRST_FRAG
                        raise _Stop
                    off += 8
                else:
                    done = True
                    break
            if not done:
                bad()
        else:
            raise _Stop

        rebase(off)
        proto = st["proto"]
        fl = st["flags"]
        if proto in (6, 17):
            if off + (20 if proto == 6 else 8) > n:
                bad()
            st["flags"] |= L.F_L4 | L.F_PORTS
        elif (proto == 1 and fl & L.F_IPV4) or (proto == 58 and fl & L.F_IPV6):
            if off + 8 > n:
                bad()
            st["flags"] |= L.F_L4
        else:
            raise _Stop
        st["l4"] = off
    except _Stop:
        pass

    fl = st["flags"]
    l3, l4 = st["l3"], st["l4"]
    if fl & L.F_IPV4:
        ethertype = ETH_P_IP
        src, dst = b[l3 + 12:l3 + 16], b[l3 + 16:l3 + 20]
    elif fl & L.F_IPV6:
        ethertype = ETH_P_IPV6
        src, dst = b[l3 + 8:l3 + 24], b[l3 + 24:l3 + 40]
    else:
        ethertype = st["et"]
        src = dst = b""
    sport = dport = 0
    if fl & L.F_PORTS:
        sport, dport = rd16(l4), rd16(l4 + 2)
    return {
        "l3_off": l3,
        "l4_off": l4,
        "ip_proto": st["proto"],
        "flags": fl,
        "n_vlan": st["n_vlan"],
        "n_mpls": st["n_mpls"],
        "vlan": list(st["vlan"]),
        "mpls": st["mpls"],
        "ethertype": ethertype,
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
    }


SUMMARY_KEYS = ("l3_off", "l4_off", "ip_proto", "flags", "n_vlan", "n_mpls", "vlan", "mpls")


def summary(d: dict) -> dict:
    """Only the fields struct sxdp_meta carries (for comparing with the C parser)."""
    return {k: d[k] for k in SUMMARY_KEYS}


def meta_summary(meta) -> dict:
    """The same fields from a numpy record of layout.META_DTYPE."""
    return {
        "l3_off": int(meta["l3_off"]),
        "l4_off": int(meta["l4_off"]),
        "ip_proto": int(meta["ip_proto"]),
        "flags": int(meta["flags"]),
        "n_vlan": int(meta["n_vlan"]),
        "n_mpls": int(meta["n_mpls"]),
        "vlan": [int(v) for v in meta["vlan"]],
        "mpls": int(meta["mpls"]),
    }

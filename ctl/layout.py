"""Python mirror of bpf/sxdp.h -- the one place Python learns the layouts that
cross the kernel/user line. tests/kernel/test_layout.py compiles the header and
checks every size and offset here against it."""
from __future__ import annotations

import numpy as np

META_LEN = 32

META_DTYPE = np.dtype(
    [
        ("l3_off", "<u2"),
        ("l4_off", "<u2"),
        ("ip_proto", "u1"),
        ("flags", "u1"),
        ("n_vlan", "u1"),
        ("n_mpls", "u1"),
        ("vlan", "<u2", (2,)),
        ("mpls", "<u4"),
        ("ts_sec", "<u4"),
        ("ts_nsec", "<u4"),
        ("caplen", "<u4"),
        ("len", "<u4"),
    ]
)
META_VLANS = 2
MAX_VLAN = 8
MAX_MPLS = 8
MAX_IP6_EXT = 8

F_IPV4 = 0x01
F_IPV6 = 0x02
F_PORTS = 0x04
F_FRAG = 0x08
F_NONFIRST_FRAG = 0x10
F_TRUNC = 0x20
F_MALFORMED = 0x40
F_L4 = 0x80

# per-CPU counter indices
C_SEEN_PKTS = 0
C_SEEN_BYTES = 1
C_REDIRECTED = 2
C_REDIRECT_FAIL = 3
C_PARSE_ERR = 4
C_OVERSIZE = 5
C_FILTERED = 6
C_META_FAIL = 7
NCOUNTERS = 8
COUNTER_NAMES = (
    "seen_pkts",
    "seen_bytes",
    "redirected",
    "redirect_fail",
    "parse_err",
    "oversize",
    "filtered",
    "meta_fail",
)

CLOCK_SLOTS = 1

REC_DTYPE = np.dtype(
    [
        ("offset", "<u8"),
        ("ts_ns", "<u8"),
        ("caplen", "<u4"),
        ("wirelen", "<u4"),
        ("src", "u1", (16,)),
        ("dst", "u1", (16,)),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("vlan", "<u2", (2,)),
        ("mpls", "<u4"),
        ("ethertype", "<u2"),
        ("proto", "u1"),
        ("flags", "u1"),
        ("n_vlan", "u1"),
        ("n_mpls", "u1"),
        ("l3_off", "<u2"),
        ("l4_off", "<u2"),
        ("_pad", "<u2"),
    ]
)

# C struct name -> numpy mirror, for the layout test
MIRRORS = {"sxdp_meta": META_DTYPE, "sxdp_rec": REC_DTYPE}
CONSTANTS = {
    "SXDP_META_LEN": META_LEN,
    "SXDP_META_VLANS": META_VLANS,
    "SXDP_MAX_VLAN": MAX_VLAN,
    "SXDP_MAX_MPLS": MAX_MPLS,
    "SXDP_MAX_IP6_EXT": MAX_IP6_EXT,
    "SXDP_F_IPV4": F_IPV4,
    "SXDP_F_IPV6": F_IPV6,
    "SXDP_F_PORTS": F_PORTS,
    "SXDP_F_FRAG": F_FRAG,
    "SXDP_F_NONFIRST_FRAG": F_NONFIRST_FRAG,
    "SXDP_F_TRUNC": F_TRUNC,
    "SXDP_F_MALFORMED": F_MALFORMED,
    "SXDP_F_L4": F_L4,
    "SXDP_C_SEEN_PKTS": C_SEEN_PKTS,
    "SXDP_C_SEEN_BYTES": C_SEEN_BYTES,
    "SXDP_C_REDIRECTED": C_REDIRECTED,
    "SXDP_C_REDIRECT_FAIL": C_REDIRECT_FAIL,
    "SXDP_C_PARSE_ERR": C_PARSE_ERR,
    "SXDP_C_OVERSIZE": C_OVERSIZE,
    "SXDP_C_FILTERED": C_FILTERED,
    "SXDP_C_META_FAIL": C_META_FAIL,
    "SXDP_NCOUNTERS": NCOUNTERS,
    "SXDP_CLOCK_SLOTS": CLOCK_SLOTS,
}
assert META_DTYPE.itemsize == META_LEN
assert REC_DTYPE.itemsize == 80

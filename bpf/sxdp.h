/* SPDX-License-Identifier: Apache-2.0
 *
 * stenoxdp: every layout that crosses the kernel/user line, defined once.
 *
 * Included by the XDP program (compiled by bcc/clang), by the native batch
 * helper (compiled by gcc, see native/), and mirrored once in Python by
 * stenoxdp.layout -- a test compiles this header and checks every size and
 * offset against the mirror (tests/kernel/test_layout.py).
 *
 * Byte order is in the names: *_be fields are network order, everything
 * else is host order.
 */
#ifndef SXDP_H
#define SXDP_H

#ifndef __KERNEL__
#ifndef SXDP_NO_STDINT
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif
#endif

/* ---- XDP metadata -------------------------------------------------------
 * The XDP program reserves SXDP_META_LEN bytes in front of every packet with
 * bpf_xdp_adjust_meta(); in AF_XDP copy mode the kernel copies them into the
 * UMEM frame right before the packet (desc.addr - SXDP_META_LEN).
 * The last 16 bytes are a complete pcap record header (nanosecond pcap), so
 * user space can write "record header + packet" as one contiguous run.
 */
#define SXDP_META_LEN 32

struct sxdp_meta {
    /* parse summary, for the indexer (offsets from the start of the frame) */
    __u16 l3_off;   /* IPv4/IPv6 header, 0 = no IP header */
    __u16 l4_off;   /* TCP/UDP/ICMP header, 0 = none (or non-first fragment) */
    __u8 ip_proto;  /* final protocol (after IPv6 extension headers) */
    __u8 flags;     /* SXDP_F_* */
    __u8 n_vlan;    /* VLAN tags seen (only the first SXDP_META_VLANS kept) */
    __u8 n_mpls;    /* MPLS labels seen (only the first kept) */
    __u16 vlan[2];  /* VLAN ids, outermost first */
    __u32 mpls;     /* first (outermost) MPLS label */
    /* pcap record header: immediately followed by the packet bytes */
    __u32 ts_sec;   /* wall clock (CLOCK_REALTIME) seconds */
    __u32 ts_nsec;  /* nanoseconds */
    __u32 caplen;   /* bytes kept (may be < len: truncated jumbo frame) */
    __u32 len;      /* length on the wire */
};
#define SXDP_META_VLANS 2
#define SXDP_MAX_VLAN 8   /* tags walked by the parser (bounded loop) */
#define SXDP_MAX_MPLS 8   /* labels walked by the parser */
#define SXDP_MAX_IP6_EXT 8 /* IPv6 extension headers walked */

/* parse flags (meta.flags and rec.flags) */
#define SXDP_F_IPV4 0x01
#define SXDP_F_IPV6 0x02
#define SXDP_F_PORTS 0x04          /* sport/dport valid (TCP or UDP, first fragment) */
#define SXDP_F_FRAG 0x08           /* an IP fragment (first or not) */
#define SXDP_F_NONFIRST_FRAG 0x10  /* fragment offset != 0: no L4 header */
#define SXDP_F_TRUNC 0x20          /* caplen < len */
#define SXDP_F_MALFORMED 0x40      /* a header was cut short or invalid */
#define SXDP_F_L4 0x80             /* an L4 header (TCP/UDP/ICMP/ICMPv6) is present */

/* ---- per-CPU counters (BPF_PERCPU_ARRAY "counters", u64 each) ---------- */
#define SXDP_C_SEEN_PKTS 0        /* every frame the program saw */
#define SXDP_C_SEEN_BYTES 1       /* their wire bytes */
#define SXDP_C_REDIRECTED 2       /* handed to an AF_XDP socket */
#define SXDP_C_REDIRECT_FAIL 3    /* no socket on that queue / redirect refused */
#define SXDP_C_PARSE_ERR 4        /* malformed frames (still captured) */
#define SXDP_C_OVERSIZE 5         /* frames truncated to fit a UMEM chunk */
#define SXDP_C_FILTERED 6         /* rejected by the capture filter (XDP_PASS) */
#define SXDP_C_META_FAIL 7        /* bpf_xdp_adjust_meta refused (captured without) */
#define SXDP_NCOUNTERS 8

/* ---- clock map (BPF_ARRAY "clock", u64[1]) -------------------------------
 * slot 0: CLOCK_REALTIME - CLOCK_MONOTONIC in ns, kept fresh by the
 * controller; the program stamps bpf_ktime_get_ns() + clock[0]. */
#define SXDP_CLOCK_SLOTS 1

/* ---- per-packet index record (written by the native helper) -------------
 * One per packet in a packet file, in file order; the indexer turns arrays of
 * these into index keys, and the query engine evaluates queries on them for
 * the file still being written. 80 bytes.
 */
struct sxdp_rec {
    __u64 offset;      /* file offset of the packet's pcap record header */
    __u64 ts_ns;       /* wall-clock ns since the epoch */
    __u32 caplen;
    __u32 wirelen;
    __u8 src[16];      /* IPv4: 4 bytes then zeros; IPv6: 16 bytes (network order) */
    __u8 dst[16];
    __u16 sport;       /* host order; valid with SXDP_F_PORTS */
    __u16 dport;
    __u16 vlan[2];     /* outermost first, n_vlan says how many are valid */
    __u32 mpls;        /* first label, valid if n_mpls > 0 */
    __u16 ethertype;   /* innermost ethertype, host order */
    __u8 proto;        /* IP protocol (after IPv6 extension headers) */
    __u8 flags;        /* SXDP_F_* */
    __u8 n_vlan;
    __u8 n_mpls;
    __u16 l3_off;
    __u16 l4_off;
    __u16 _pad;
};

#endif /* SXDP_H */

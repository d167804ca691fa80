/* SPDX-License-Identifier: Apache-2.0
 *
 * stenoxdp: THE packet parser. One source, compiled twice:
 *   - by bcc/clang into the XDP program (bpf/capture.c), where every read is
 *     checked against data_end so the verifier accepts it;
 *   - by gcc into the native batch helper (native/sxdp_native.c), which runs
 *     it over pcap records (import, reindex, crash salvage).
 * indexer/parse.py is a pure-Python twin used by the tests to cross-check.
 *
 * What it decodes (the rules of REFERENCE.md section 1, minus Stenographer's
 * non-first-fragment bug):
 *   Ethernet; up to SXDP_MAX_VLAN VLAN tags (0x8100, 0x88a8, 0x9100, 0x9200,
 *   0x9300; the first SXDP_META_VLANS ids kept, all counted);
 *   MPLS (0x8847/0x8848): up to SXDP_MAX_MPLS labels to bottom-of-stack, then
 *   the first nibble: 4 -> IPv4, 6 -> IPv6, 0 -> skip the 4-byte pseudowire
 *   control word and parse an Ethernet header again (at most
 *   SXDP_MAX_ENCAP Ethernet headers in all); anything else: no L3;
 *   IPv4 honouring IHL (IHL >= 5, version 4, whole header present);
 *   IPv6 walking hop-by-hop (0), routing (43), destination options (60),
 *   mobility (135) and fragment (44) headers, at most SXDP_MAX_IP6_EXT;
 *   TCP (whole 20-byte header), UDP (8 bytes), ICMP/ICMPv6 (8 bytes).
 *
 * Semantics of the result (struct sxdp_meta's parse summary):
 *   l3_off    offset of a valid IPv4/IPv6 header, else 0 (flags IPV4/IPV6)
 *   l4_off    offset of a complete TCP/UDP/ICMP/ICMPv6 header, else 0 (F_L4)
 *   ip_proto  the final protocol (after IPv6 extension headers; for a
 *             non-first IPv6 fragment the fragment header's next header)
 *   F_PORTS   TCP/UDP ports readable at l4_off, l4_off + 2
 *   F_FRAG    an IP fragment (MF set or offset != 0)
 *   F_NONFIRST_FRAG offset != 0: no l4_off, no ports (unlike Stenographer)
 *   F_MALFORMED a header was cut short or invalid: parsing stopped there,
 *             what was decoded before stays. Never a reason to drop a packet.
 * Return value: the innermost ethertype (host order), 0 if the Ethernet
 * header itself is missing (MPLS with an IP payload returns 0x0800/0x86dd).
 * Byte order: fields are read byte by byte, so the parser is independent of
 * host byte order and of alignment.
 */
#ifndef SXDP_PARSE_H
#define SXDP_PARSE_H

#include "sxdp.h"

#ifndef SXDP_INLINE
#ifdef SXDP_BPF
#define SXDP_INLINE static __always_inline
#else
#define SXDP_INLINE static inline __attribute__((always_inline))
#endif
#endif

/* Ethernet headers parsed in all: the outer one plus one pseudowire inner. */
#define SXDP_MAX_ENCAP 2

#define SXDP_ETH_P_IP 0x0800
#define SXDP_ETH_P_IPV6 0x86DD
#define SXDP_ETH_P_MPLS_UC 0x8847
#define SXDP_ETH_P_MPLS_MC 0x8848

SXDP_INLINE int sxdp_is_vlan(__u16 et)
{
    return et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200 || et == 0x9300;
}

#define SXDP_RD16(p) ((__u16)(((__u16)(p)[0] << 8) | (__u16)(p)[1]))

/* Offsets, not pointers: the parser keeps the current position as a scalar
 * offset from the start of the frame and forms "start + off" for every read,
 * after checking that n bytes are there on that very pointer.
 *
 * Verifier complexity: the BPF verifier marks a scalar added to a packet
 * pointer as "precise", so every distinct link-layer path (number of VLAN
 * tags x MPLS labels x pseudowire) would reach the IP header with a
 * different constant offset and be explored separately through the IPv6
 * extension-header walk (~1M instructions: rejected). SXDP_FORGET(off) makes
 * the verifier forget the exact value: it writes the offset to the stack as
 * two bytes and reads it back as one u16 (a partial stack slot reads back as
 * an unknown scalar), then bounds it by SXDP_MAX_HDR_OFF. States then merge.
 * (off < 0x8000 + 2048 there, so the u16 round trip is exact.)
 * In user space (gcc) it is the identity. Both builds, and indexer/parse.py,
 * treat an offset beyond SXDP_MAX_HDR_OFF at those points as malformed.
 * Branch-free selects (SXDP_IS_ZERO) keep n_vlan/n_mpls imprecise for the
 * same reason. */
#define SXDP_MAX_HDR_OFF 0x7FFF
#ifdef SXDP_BPF
#define SXDP_FORGET(v)                                        \
    do {                                                      \
        volatile __u8 _fb[8] __attribute__((aligned(8)));     \
        _fb[0] = (__u8)(v);                                   \
        _fb[1] = (__u8)((v) >> 8);                            \
        (v) = *(volatile __u16 *)_fb;                         \
    } while (0)
#define SXDP_OPAQUE(v) asm volatile("" : "+r"(v))
#else
#define SXDP_FORGET(v) do { } while (0)
#define SXDP_OPAQUE(v) do { } while (0)
#endif
/* forget the offset's exact value; beyond SXDP_MAX_HDR_OFF: malformed.
 * The mask after the check is a no-op for the value; it gives the verifier
 * the bound on the very register clang then adds to the packet pointer. */
#define SXDP_REBASE(v)                  \
    do {                                \
        SXDP_FORGET(v);                 \
        if ((v) > SXDP_MAX_HDR_OFF)     \
            SXDP_BAD();                 \
        SXDP_OPAQUE(v);                 \
        (v) &= SXDP_MAX_HDR_OFF;        \
    } while (0)

/* 1 if x == 0 else 0, for x < 2^31, computed without a branch */
#define SXDP_IS_ZERO(x) (((__u32)(x) - 1u) >> 31)
/* n bytes at offset off inside the frame? (sets p = start + off) */
#define SXDP_AT(off, n) ((p = start + (off)) + (n) <= end)
#define SXDP_BAD() do { flags |= SXDP_F_MALFORMED; goto out; } while (0)

SXDP_INLINE __u16 sxdp_parse(const void *data, const void *data_end, struct sxdp_meta *m)
{
    const __u8 *start = (const __u8 *)data;
    const __u8 *end = (const __u8 *)data_end;
    const __u8 *p;
    __u32 off = 0, l3 = 0, l4 = 0;
    __u16 et = 0;
    __u8 proto = 0;
    __u8 flags = 0;
    __u32 n_vlan = 0, n_mpls = 0, v0 = 0, v1 = 0, label = 0, id, sel;
    int enc, i;

    /* ---- link layer: Ethernet, VLAN tags, MPLS, pseudowire ---- */
    for (enc = 0; enc < SXDP_MAX_ENCAP; enc++) {
        int again = 0;

        SXDP_REBASE(off);
        if (!SXDP_AT(off, 14))
            SXDP_BAD();
        et = SXDP_RD16(p + 12);
        off += 14;

        for (i = 0; i < SXDP_MAX_VLAN; i++) {
            if (!sxdp_is_vlan(et))
                break;
            if (!SXDP_AT(off, 4))
                SXDP_BAD();
            id = SXDP_RD16(p) & 0x0FFF;
            /* keep the first two ids without branching on n_vlan (a branch
             * would make the verifier tell apart every tag count) */
            sel = SXDP_IS_ZERO(n_vlan);
            v0 |= id & (0u - sel);
            sel = SXDP_IS_ZERO(n_vlan ^ 1u);
            v1 |= id & (0u - sel);
            n_vlan++;
            et = SXDP_RD16(p + 2);
            off += 4;
        }
        if (sxdp_is_vlan(et)) /* more tags than we walk */
            SXDP_BAD();

        if (et == SXDP_ETH_P_MPLS_UC || et == SXDP_ETH_P_MPLS_MC) {
            int bos = 0;
            for (i = 0; i < SXDP_MAX_MPLS; i++) {
                __u32 lse;
                if (!SXDP_AT(off, 4))
                    SXDP_BAD();
                lse = ((__u32)p[0] << 24) | ((__u32)p[1] << 16) | ((__u32)p[2] << 8) | (__u32)p[3];
                sel = SXDP_IS_ZERO(n_mpls);
                label |= (lse >> 12) & (0u - sel);
                n_mpls++;
                off += 4;
                if (lse & 0x100) {
                    bos = 1;
                    break;
                }
            }
            if (!bos) /* more labels than we walk */
                SXDP_BAD();
            if (!SXDP_AT(off, 1))
                SXDP_BAD();
            switch (p[0] >> 4) {
            case 4:
                et = SXDP_ETH_P_IP;
                break;
            case 6:
                et = SXDP_ETH_P_IPV6;
                break;
            case 0: /* pseudowire control word, then Ethernet again */
                if (enc + 1 >= SXDP_MAX_ENCAP)
                    SXDP_BAD();
                off += 4;
                again = 1;
                break;
            default: /* unknown payload: nothing more to decode */
                goto out;
            }
        }
        if (!again)
            break;
    }

    /* ---- network layer ---- */
    SXDP_REBASE(off);
    if (et == SXDP_ETH_P_IP) {
        __u32 ihl;
        __u16 frag;
        if (!SXDP_AT(off, 20) || (p[0] >> 4) != 4)
            SXDP_BAD();
        ihl = (__u32)(p[0] & 0x0F) * 4;
        if (ihl < 20 || !SXDP_AT(off, ihl))
            SXDP_BAD();
        flags |= SXDP_F_IPV4;
        l3 = off;
        proto = p[9];
        frag = SXDP_RD16(p + 6);
        if (frag & 0x3FFF)
            flags |= SXDP_F_FRAG;
        if (frag & 0x1FFF) {
            flags |= SXDP_F_NONFIRST_FRAG;
            goto out;
        }
        off += ihl;
    } else if (et == SXDP_ETH_P_IPV6) {
        __u8 nh;
        int done = 0;
        if (!SXDP_AT(off, 40) || (p[0] >> 4) != 6)
            SXDP_BAD();
        flags |= SXDP_F_IPV6;
        l3 = off;
        nh = p[6];
        proto = nh;
        off += 40;
        for (i = 0; i < SXDP_MAX_IP6_EXT; i++) {
            SXDP_REBASE(off);
            if (nh == 0 || nh == 43 || nh == 60 || nh == 135) {
                if (!SXDP_AT(off, 8))
                    SXDP_BAD();
                nh = p[0];
                proto = nh;
                off += ((__u32)p[1] + 1) * 8;
            } else if (nh == 44) {
                __u16 fo;
                if (!SXDP_AT(off, 8))
                    SXDP_BAD();
                nh = p[0];
                proto = nh;
                fo = SXDP_RD16(p + 2);
                if (fo & 0xFFF9) /* offset bits or M */
                    flags |= SXDP_F_FRAG;
                if (fo & 0xFFF8) {
                    flags |= SXDP_F_NONFIRST_FRAG;
                    goto out;
                }
                off += 8;
            } else {
                done = 1;
                break;
            }
        }
        if (!done) /* more extension headers than we walk */
            SXDP_BAD();
    } else {
        goto out;
    }

    /* ---- transport layer ---- */
    SXDP_REBASE(off);
    if (proto == 6) {
        if (!SXDP_AT(off, 20))
            SXDP_BAD();
        flags |= SXDP_F_L4 | SXDP_F_PORTS;
    } else if (proto == 17) {
        if (!SXDP_AT(off, 8))
            SXDP_BAD();
        flags |= SXDP_F_L4 | SXDP_F_PORTS;
    } else if ((proto == 1 && (flags & SXDP_F_IPV4)) || (proto == 58 && (flags & SXDP_F_IPV6))) {
        if (!SXDP_AT(off, 8))
            SXDP_BAD();
        flags |= SXDP_F_L4;
    } else {
        goto out;
    }
    l4 = off;

out:
    m->l3_off = (__u16)l3;
    m->l4_off = (__u16)l4;
    m->ip_proto = proto;
    m->flags = flags;
    m->n_vlan = (__u8)n_vlan;
    m->n_mpls = (__u8)n_mpls;
    m->vlan[0] = (__u16)v0;
    m->vlan[1] = (__u16)v1;
    m->mpls = label;
    if (flags & SXDP_F_IPV4)
        return SXDP_ETH_P_IP;
    if (flags & SXDP_F_IPV6)
        return SXDP_ETH_P_IPV6;
    return et;
}

#endif /* SXDP_PARSE_H */

/* SPDX-License-Identifier: Apache-2.0
 *
 * stenoxdp native batch helper: called through ctypes once per batch, never
 * per packet. Shares bpf/sxdp.h (layouts) and bpf/parse.h (the packet parser)
 * with the XDP program. Signatures are declared for ctypes in native/api.py.
 *
 *   sxdp_gather      AF_XDP RX descriptors -> "pcap record header + packet"
 *                    runs in a staging buffer + one struct sxdp_rec each
 *   sxdp_index_pcap  classic pcap records (no global header) -> sxdp_rec
 *                    (import, reindex, crash salvage)
 *   sxdp_parse_one   the parser on one frame (tests, cross-checks)
 *
 * Never trusts its input: descriptors are checked against the UMEM, offsets
 * from the metadata against caplen, pcap record lengths against the buffer.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sxdp.h"
#include "parse.h"

#define SXDP_EXPORT __attribute__((visibility("default")))

/* descriptors to look ahead in sxdp_gather */
#define SXDP_PREFETCH 4

/* a pcap record longer than this is corrupt (the file is damaged there) */
#define SXDP_PCAP_MAX_CAPLEN (256u * 1024u)
#define SXDP_PCAP_HDR 16u

/* sxdp_index_pcap status */
#define SXDP_IDX_END 0       /* stopped at the end of the buffer or a partial record */
#define SXDP_IDX_FULL 1      /* stopped because max_recs records were produced */
#define SXDP_IDX_CORRUPT 2   /* stopped at a record whose caplen is impossible */

struct sxdp_xdp_desc {
    uint64_t addr;
    uint32_t len;
    uint32_t options;
};

_Static_assert(sizeof(struct sxdp_meta) == SXDP_META_LEN, "sxdp_meta size");
_Static_assert(sizeof(struct sxdp_rec) == 80, "sxdp_rec size");
_Static_assert(sizeof(struct sxdp_xdp_desc) == 16, "xdp_desc size");

static inline uint32_t rd32le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint16_t rd16be(const uint8_t *p)
{
    return (uint16_t)(((uint16_t)p[0] << 8) | p[1]);
}

/* Fill the address/port/summary part of a record from a parse summary; the
 * offsets are re-checked against caplen (a truncated frame may end before
 * the headers the kernel saw). */
static void fill_rec(struct sxdp_rec *r, const uint8_t *pkt, uint32_t caplen, const struct sxdp_meta *m,
                     uint16_t ethertype)
{
    uint8_t flags = m->flags;

    memset(r->src, 0, sizeof r->src);
    memset(r->dst, 0, sizeof r->dst);
    r->sport = 0;
    r->dport = 0;
    if ((flags & SXDP_F_IPV4) && (uint32_t)m->l3_off + 20 <= caplen) {
        memcpy(r->src, pkt + m->l3_off + 12, 4);
        memcpy(r->dst, pkt + m->l3_off + 16, 4);
    } else if ((flags & SXDP_F_IPV6) && (uint32_t)m->l3_off + 40 <= caplen) {
        memcpy(r->src, pkt + m->l3_off + 8, 16);
        memcpy(r->dst, pkt + m->l3_off + 24, 16);
    } else if (flags & (SXDP_F_IPV4 | SXDP_F_IPV6)) {
        flags &= (uint8_t) ~(SXDP_F_IPV4 | SXDP_F_IPV6 | SXDP_F_PORTS | SXDP_F_L4);
        flags |= SXDP_F_MALFORMED;
    }
    if (flags & SXDP_F_PORTS) {
        if (m->l4_off != 0 && (uint32_t)m->l4_off + 4 <= caplen) {
            r->sport = rd16be(pkt + m->l4_off);
            r->dport = rd16be(pkt + m->l4_off + 2);
        } else {
            flags &= (uint8_t)~SXDP_F_PORTS;
        }
    }
    r->vlan[0] = m->vlan[0];
    r->vlan[1] = m->vlan[1];
    r->mpls = m->mpls;
    r->ethertype = ethertype;
    r->proto = m->ip_proto;
    r->flags = flags;
    r->n_vlan = m->n_vlan;
    r->n_mpls = m->n_mpls;
    r->l3_off = m->l3_off;
    r->l4_off = m->l4_off;
    r->_pad = 0;
}

static uint16_t ethertype_of(const struct sxdp_meta *m, const uint8_t *pkt, uint32_t caplen)
{
    struct sxdp_meta tmp;

    if (m->flags & SXDP_F_IPV4)
        return SXDP_ETH_P_IP;
    if (m->flags & SXDP_F_IPV6)
        return SXDP_ETH_P_IPV6;
    /* rare (non-IP): parse again for the innermost ethertype */
    return sxdp_parse(pkt, pkt + caplen, &tmp);
}

/* Copy n RX descriptors' frames into out as pcap records and describe each
 * in recs. Returns bytes written to out; *n_done = descriptors consumed
 * (including bad ones, which produce neither bytes nor a record: *n_bad).
 * Records produced = *n_done - *n_bad, in ring order. Stops before a record
 * that would not fit in out_cap. */
SXDP_EXPORT uint64_t sxdp_gather(const uint8_t *umem, uint64_t umem_len, const struct sxdp_xdp_desc *descs,
                                 uint32_t ring_mask, uint32_t start_idx, uint32_t n, uint8_t *out, uint64_t out_cap,
                                 uint64_t file_off, struct sxdp_rec *recs, uint32_t *n_done, uint32_t *n_bad)
{
    uint64_t pos = 0;
    uint32_t i, nrec = 0, bad = 0;

    for (i = 0; i < n; i++) {
        const struct sxdp_xdp_desc *d = &descs[(start_idx + i) & ring_mask];
        uint64_t addr = d->addr;
        if (i + SXDP_PREFETCH < n) {
            /* the frames were just written by the kernel on another CPU: fetch the metadata
             * and the packet's first line a few descriptors ahead (a prefetch never faults) */
            uint64_t ahead = descs[(start_idx + i + SXDP_PREFETCH) & ring_mask].addr;
            if (ahead >= SXDP_META_LEN && ahead < umem_len) {
                __builtin_prefetch(umem + ahead - SXDP_META_LEN);
                __builtin_prefetch(umem + ahead + 32);
            }
        }
        uint32_t caplen = d->len;
        struct sxdp_meta mcopy; /* the metadata may be unaligned in a hostile UMEM */
        const struct sxdp_meta *m = &mcopy;
        const uint8_t *pkt;
        struct sxdp_rec *r;
        uint8_t *h;
        uint32_t wirelen;

        if (addr < SXDP_META_LEN || addr > umem_len || caplen > umem_len - addr || caplen == 0 ||
            caplen > 0xFFFF) {
            bad++;
            continue;
        }
        if (pos + SXDP_PCAP_HDR + caplen > out_cap)
            break;
        memcpy(&mcopy, umem + addr - SXDP_META_LEN, SXDP_META_LEN);
        pkt = umem + addr;
        wirelen = m->len > caplen ? m->len : caplen;

        h = out + pos;
        memcpy(h, &m->ts_sec, 8); /* ts_sec, ts_nsec */
        memcpy(h + 8, &caplen, 4);
        memcpy(h + 12, &wirelen, 4);
        memcpy(h + SXDP_PCAP_HDR, pkt, caplen);

        r = &recs[nrec++];
        r->offset = file_off + pos;
        r->ts_ns = (uint64_t)m->ts_sec * 1000000000ull + m->ts_nsec;
        r->caplen = caplen;
        r->wirelen = wirelen;
        fill_rec(r, pkt, caplen, m, ethertype_of(m, pkt, caplen));
        if (caplen < wirelen)
            r->flags |= SXDP_F_TRUNC;
        pos += SXDP_PCAP_HDR + caplen;
    }
    *n_done = i;
    *n_bad = bad;
    return pos;
}

/* Index classic pcap records (little-endian, no global header) in buf.
 * base_off = file offset of buf[0]; nsec: timestamps are ns (else us).
 * Returns the number of records produced; *consumed = bytes of the complete
 * records walked; *status = SXDP_IDX_*. */
SXDP_EXPORT uint32_t sxdp_index_pcap(const uint8_t *buf, uint64_t len, uint64_t base_off, int nsec,
                                     struct sxdp_rec *recs, uint32_t max_recs, uint64_t *consumed,
                                     uint32_t *status)
{
    uint64_t pos = 0;
    uint32_t n = 0;

    *status = SXDP_IDX_END;
    while (len - pos >= SXDP_PCAP_HDR) {
        const uint8_t *h = buf + pos;
        uint32_t sec = rd32le(h), frac = rd32le(h + 4);
        uint32_t caplen = rd32le(h + 8), wirelen = rd32le(h + 12);
        const uint8_t *pkt = h + SXDP_PCAP_HDR;
        struct sxdp_meta m;
        struct sxdp_rec *r;
        uint16_t et;

        if (caplen > SXDP_PCAP_MAX_CAPLEN) {
            *status = SXDP_IDX_CORRUPT;
            break;
        }
        if (len - pos - SXDP_PCAP_HDR < caplen)
            break;
        if (n >= max_recs) {
            *status = SXDP_IDX_FULL;
            break;
        }
        et = sxdp_parse(pkt, pkt + caplen, &m);
        r = &recs[n++];
        r->offset = base_off + pos;
        r->ts_ns = (uint64_t)sec * 1000000000ull + (nsec ? (uint64_t)frac : (uint64_t)frac * 1000ull);
        r->caplen = caplen;
        r->wirelen = wirelen;
        fill_rec(r, pkt, caplen, &m, et);
        if (caplen < wirelen)
            r->flags |= SXDP_F_TRUNC;
        pos += SXDP_PCAP_HDR + caplen;
    }
    *consumed = pos;
    return n;
}

/* The parser on one frame: fills *m (parse summary only), returns the
 * innermost ethertype. */
SXDP_EXPORT uint32_t sxdp_parse_one(const uint8_t *frame, uint32_t len, struct sxdp_meta *m)
{
    memset(m, 0, sizeof *m);
    return sxdp_parse(frame, frame + len, m);
}

/* Parse n frames laid out back to back (lengths in lens) into metas. */
SXDP_EXPORT void sxdp_parse_many(const uint8_t *buf, const uint32_t *lens, uint32_t n, struct sxdp_meta *metas,
                                 uint16_t *ethertypes)
{
    uint64_t pos = 0;
    uint32_t i;

    for (i = 0; i < n; i++) {
        memset(&metas[i], 0, sizeof metas[i]);
        ethertypes[i] = sxdp_parse(buf + pos, buf + pos + lens[i], &metas[i]);
        pos += lens[i];
    }
}

SXDP_EXPORT uint32_t sxdp_abi_version(void)
{
    return (uint32_t)(sizeof(struct sxdp_rec) << 16 | sizeof(struct sxdp_meta));
}

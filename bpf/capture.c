/* SPDX-License-Identifier: Apache-2.0
 *
 * stenoxdp capture program (XDP, compiled by bcc; ctl/bpfprog.py renders and
 * loads it). Per frame:
 *   1. count SEEN_PKTS / SEEN_BYTES;
 *   2. the capture filter hook sxdp_filter(): 0 -> FILTERED, XDP_PASS (the
 *      host keeps the frame, we do not capture it);
 *   3. parse (bpf/parse.h) -> the parse summary; malformed -> PARSE_ERR;
 *   4. frames longer than SXDP_MAX_CAPLEN are cut with bpf_xdp_adjust_tail
 *      (OVERSIZE, F_TRUNC; meta.len keeps the wire length);
 *   5. reserve SXDP_META_LEN bytes of metadata (META_FAIL -> XDP_PASS) and
 *      fill struct sxdp_meta: parse summary + a nanosecond pcap record header
 *      (wall clock = bpf_ktime_get_ns() + clock[0]);
 *   6. redirect to the AF_XDP socket of this rx queue (xsks), XDP_PASS if
 *      there is none (REDIRECTED / REDIRECT_FAIL).
 *
 * Compile-time parameters (-D, from the loader):
 *   SXDP_MAX_CAPLEN   UMEM chunk size - XDP_PACKET_HEADROOM - SXDP_META_LEN
 *   SXDP_PIN_XSKS / SXDP_PIN_CLOCK  paths (string literals) under bpffs:
 *                     xsks and clock become pinned maps shared by two program
 *                     instances (atomic filter swap); counters stay per
 *                     instance.
 */
#include <uapi/linux/bpf.h>
#define SXDP_BPF 1 /* parse.h: the BPF build */
#include "sxdp.h"
#include "parse.h"

#ifndef SXDP_MAX_CAPLEN
#define SXDP_MAX_CAPLEN 1760
#endif
#define SXDP_XSKS_ENTRIES 64

#ifdef SXDP_PIN_XSKS
BPF_XSKMAP(xsks, SXDP_XSKS_ENTRIES, SXDP_PIN_XSKS);
#else
BPF_XSKMAP(xsks, SXDP_XSKS_ENTRIES);
#endif
BPF_PERCPU_ARRAY(counters, __u64, SXDP_NCOUNTERS);
#ifdef SXDP_PIN_CLOCK
BPF_TABLE_PINNED("array", int, __u64, clock, SXDP_CLOCK_SLOTS, SXDP_PIN_CLOCK);
#else
BPF_ARRAY(clock, __u64, SXDP_CLOCK_SLOTS);
#endif

#ifndef SXDP_FILTER_DEFINED
static __always_inline int sxdp_filter(void *data, void *data_end, __u32 wirelen) { return 1; }
#endif

static __always_inline void sxdp_count(int idx, __u64 n)
{
    __u64 *c = counters.lookup(&idx);
    if (c)
        *c += n;
}

int sxdp_capture(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u32 len = (__u32)(data_end - data);
    __u32 caplen = len;
    struct sxdp_meta pm = {};
    struct sxdp_meta *meta;
    __u64 now;
    __u64 *off;
    int zero = 0;
    int rc;

    sxdp_count(SXDP_C_SEEN_PKTS, 1);
    sxdp_count(SXDP_C_SEEN_BYTES, len);

    if (!sxdp_filter(data, data_end, len)) {
        sxdp_count(SXDP_C_FILTERED, 1);
        return XDP_PASS;
    }

    sxdp_parse(data, data_end, &pm);
    if (pm.flags & SXDP_F_MALFORMED)
        sxdp_count(SXDP_C_PARSE_ERR, 1);

    if (len > SXDP_MAX_CAPLEN) {
        if (bpf_xdp_adjust_tail(ctx, (int)SXDP_MAX_CAPLEN - (int)len) == 0) {
            caplen = SXDP_MAX_CAPLEN;
            pm.flags |= SXDP_F_TRUNC;
        }
        sxdp_count(SXDP_C_OVERSIZE, 1);
    }

    if (bpf_xdp_adjust_meta(ctx, -(int)SXDP_META_LEN) != 0) {
        sxdp_count(SXDP_C_META_FAIL, 1);
        return XDP_PASS;
    }
    data = (void *)(long)ctx->data;
    meta = (struct sxdp_meta *)(void *)(long)ctx->data_meta;
    if ((void *)(meta + 1) > data) {
        sxdp_count(SXDP_C_META_FAIL, 1);
        return XDP_PASS;
    }

    now = bpf_ktime_get_ns();
    off = clock.lookup(&zero);
    if (off)
        now += *off;

    meta->l3_off = pm.l3_off;
    meta->l4_off = pm.l4_off;
    meta->ip_proto = pm.ip_proto;
    meta->flags = pm.flags;
    meta->n_vlan = pm.n_vlan;
    meta->n_mpls = pm.n_mpls;
    meta->vlan[0] = pm.vlan[0];
    meta->vlan[1] = pm.vlan[1];
    meta->mpls = pm.mpls;
    meta->ts_sec = (__u32)(now / 1000000000ULL);
    meta->ts_nsec = (__u32)(now % 1000000000ULL);
    meta->caplen = caplen;
    meta->len = len;

    rc = xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
    if (rc == XDP_REDIRECT)
        sxdp_count(SXDP_C_REDIRECTED, 1);
    else
        sxdp_count(SXDP_C_REDIRECT_FAIL, 1);
    return rc;
}

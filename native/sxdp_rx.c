/* SPDX-License-Identifier: Apache-2.0
 *
 * One call per RX batch for the writer: take what the kernel produced on the
 * AF_XDP RX ring (up to max_n), gather "pcap record header + packet" for each
 * into the staging buffer with an index record (sxdp_gather), hand the frames
 * back to the fill ring, and publish both ring indices. Python calls this once
 * per batch with precomputed pointers; nothing per packet happens in Python.
 */
#include <stdint.h>
#include "sxdp.h"

#ifndef SXDP_EXPORT
#define SXDP_EXPORT __attribute__((visibility("default")))
#endif

struct sxdp_xdp_desc;   /* {u64 addr; u32 len; u32 options}, see sxdp_native.c */
struct rx_desc { uint64_t addr; uint32_t len; uint32_t options; };

uint64_t sxdp_gather(const uint8_t *umem, uint64_t umem_len, const struct sxdp_xdp_desc *descs,
                     uint32_t ring_mask, uint32_t start_idx, uint32_t n, uint8_t *out, uint64_t out_cap,
                     uint64_t file_off, struct sxdp_rec *recs, uint32_t *n_done, uint32_t *n_bad);

struct sxdp_rx_result {
    uint64_t nbytes;      /* bytes appended to out */
    uint64_t wire_bytes;  /* sum of wire lengths of the packets written */
    uint64_t last_ts;     /* timestamp of the last packet written */
    uint32_t ndone;       /* descriptors consumed (frames recycled) */
    uint32_t nbad;        /* of which skipped as invalid */
    uint32_t avail;       /* descriptors that were available */
    uint32_t _pad;
};

SXDP_EXPORT uint64_t sxdp_rx_batch(const uint8_t *umem, uint64_t umem_len, uint64_t frame_mask,
                                   const struct rx_desc *rx, uint32_t *rx_prod, uint32_t *rx_cons,
                                   uint32_t rx_mask, uint64_t *fill, uint32_t *fill_prod, uint32_t fill_mask,
                                   uint32_t max_n, uint8_t *out, uint64_t out_cap, uint64_t file_off,
                                   struct sxdp_rec *recs, uint32_t recs_cap, struct sxdp_rx_result *res)
{
    uint32_t prod = __atomic_load_n(rx_prod, __ATOMIC_ACQUIRE);
    uint32_t cons = *rx_cons;
    uint32_t avail = prod - cons, n = avail, done = 0, bad = 0, i, fp;
    uint64_t wire = 0, nbytes;

    res->avail = avail;
    res->nbytes = res->wire_bytes = 0;
    res->ndone = res->nbad = 0;
    if (n > max_n)
        n = max_n;
    if (n > recs_cap)
        n = recs_cap;
    if (n == 0)
        return 0;
    nbytes = sxdp_gather(umem, umem_len, (const struct sxdp_xdp_desc *)rx, rx_mask, cons, n, out, out_cap,
                         file_off, recs, &done, &bad);
    for (i = 0; i + bad < done; i++)
        wire += recs[i].wirelen;
    if (done > bad)
        res->last_ts = recs[done - bad - 1].ts_ns;
    fp = *fill_prod;
    for (i = 0; i < done; i++)
        fill[(fp + i) & fill_mask] = rx[(cons + i) & rx_mask].addr & frame_mask;
    __atomic_store_n(fill_prod, fp + done, __ATOMIC_RELEASE);
    __atomic_store_n(rx_cons, cons + done, __ATOMIC_RELEASE);
    res->nbytes = nbytes;
    res->wire_bytes = wire;
    res->ndone = done;
    res->nbad = bad;
    return nbytes;
}

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

/* ---- many batches per call ------------------------------------------------
 * sxdp_rx_run: what the writer's Python loop would do per batch, in C: wait
 * (nanosleep, the GIL released by ctypes) until `batch` descriptors are there
 * or max_wait_ns has passed since the last batch, then sxdp_rx_batch; repeat
 * until stop_bytes are staged, room for another batch is gone, budget_ns is
 * spent, or the ring has stayed empty for idle_ns. Python handles the writes,
 * rotation and status between calls (at least every budget_ns).
 */
#include <time.h>

struct sxdp_run_result {
    uint64_t nbytes;      /* bytes appended to out */
    uint64_t wire_bytes;  /* wire bytes of the packets written */
    uint64_t last_ts;     /* timestamp of the last packet written */
    uint32_t nrecs;       /* records written */
    uint32_t ndone;       /* descriptors consumed */
    uint32_t nbad;        /* of which invalid */
    uint32_t batches;
    uint32_t reason;      /* SXDP_RUN_* */
    uint32_t _pad;
};
#define SXDP_RUN_STAGED 0  /* stop_bytes reached */
#define SXDP_RUN_ROOM 1    /* no room for another batch (staging, records or file size) */
#define SXDP_RUN_BUDGET 2  /* budget_ns spent */
#define SXDP_RUN_IDLE 3    /* the ring stayed empty for idle_ns */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

SXDP_EXPORT uint32_t sxdp_rx_run(const uint8_t *umem, uint64_t umem_len, uint64_t frame_mask,
                                 const struct rx_desc *rx, uint32_t *rx_prod, uint32_t *rx_cons, uint32_t rx_mask,
                                 uint64_t *fill, uint32_t *fill_prod, uint32_t fill_mask,
                                 uint32_t batch, uint32_t max_rec, uint64_t max_wait_ns, uint64_t budget_ns,
                                 uint64_t idle_ns, uint8_t *out, uint64_t out_room, uint64_t stop_bytes,
                                 uint64_t file_off, struct sxdp_rec *recs, uint32_t recs_room,
                                 struct sxdp_run_result *res)
{
    uint64_t start = mono_ns(), now = start, last_batch = start, empty_since = 0;
    struct sxdp_rx_result one;

    res->nbytes = res->wire_bytes = 0;
    res->nrecs = res->ndone = res->nbad = res->batches = 0;
    for (;;) {
        uint32_t avail = __atomic_load_n(rx_prod, __ATOMIC_ACQUIRE) - *rx_cons, n;
        uint64_t room_bytes = out_room - res->nbytes;

        if (avail == 0) {
            if (!empty_since)
                empty_since = now;
            if (now - empty_since >= idle_ns) {
                res->reason = SXDP_RUN_IDLE;
                return res->reason;
            }
            sleep_ns(max_wait_ns);
            now = mono_ns();
            if (now - start >= budget_ns) {
                res->reason = SXDP_RUN_BUDGET;
                return res->reason;
            }
            continue;
        }
        empty_since = 0;
        if (avail < batch && now - last_batch < max_wait_ns) {
            sleep_ns(max_wait_ns - (now - last_batch));
            now = mono_ns();
            continue;
        }
        n = batch;
        if ((uint64_t)n * max_rec > room_bytes)
            n = (uint32_t)(room_bytes / max_rec);
        if (n > recs_room - res->nrecs)
            n = recs_room - res->nrecs;
        if (n == 0) {
            res->reason = SXDP_RUN_ROOM;
            return res->reason;
        }
        sxdp_rx_batch(umem, umem_len, frame_mask, rx, rx_prod, rx_cons, rx_mask, fill, fill_prod, fill_mask, n,
                      out + res->nbytes, room_bytes, file_off + res->nbytes, recs + res->nrecs,
                      recs_room - res->nrecs, &one);
        res->nbytes += one.nbytes;
        res->wire_bytes += one.wire_bytes;
        res->ndone += one.ndone;
        res->nbad += one.nbad;
        res->nrecs += one.ndone - one.nbad;
        if (one.ndone > one.nbad)
            res->last_ts = one.last_ts;
        res->batches++;
        now = mono_ns();
        last_batch = now;
        if (res->nbytes >= stop_bytes) {
            res->reason = SXDP_RUN_STAGED;
            return res->reason;
        }
        if (now - start >= budget_ns) {
            res->reason = SXDP_RUN_BUDGET;
            return res->reason;
        }
    }
}

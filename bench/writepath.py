"""Write-path micro-benchmark: PcapSink (the writer's file side) with O_DIRECT
1 MiB blocks vs buffered writes, on the store's disk. Stages 1500/512/64-byte
records the way the native gather does (one numpy copy per 256-packet batch)
and reports GB/s and CPU ns per packet. `python -m bench.writepath [DIR]`."""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from stenoxdp.store import Store
from stenoxdp.writer import PcapSink


def run_once(root: str, mode: str, size: int, total_bytes: int, batch: int = 256) -> dict:
    store = Store(root).init()
    sink = PcapSink(store, "bench", 0, rotate_seconds=3600, rotate_bytes=4 << 30, direct=mode)
    rec = np.frombuffer(b"\x00" * 16 + bytes(range(256)) * (size // 256 + 1), dtype=np.uint8)[: 16 + size]
    one = np.tile(rec, batch)
    n = total_bytes // len(one)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    sink.open_new()
    for _ in range(n):
        if sink.space() < len(one):
            sink.write_blocks()
        sink.st[sink.pos : sink.pos + len(one)] = one
        sink.pos += len(one)
        if sink.pos >= sink.block:
            sink.write_blocks()
    path = sink.close()
    os.sync()
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    pkts = n * batch
    nbytes = path.stat().st_size
    path.unlink()
    return {"mode": mode, "size": size, "GBps": nbytes / (t1 - t0) / 1e9, "cpu_ns_per_pkt": cpu / pkts * 1e9,
            "Mpps": pkts / (t1 - t0) / 1e6, "direct": sink.direct_active}


def main() -> int:
    base = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    total = int(os.environ.get("WRITEPATH_BYTES", 1 << 30))
    rows = []
    for size in (1500, 512, 64):
        for mode in ("direct", "buffered"):
            runs = []
            for _ in range(3):
                d = tempfile.mkdtemp(prefix="sxdp-wp-", dir=base)
                try:
                    runs.append(run_once(d, mode, size, total))
                finally:
                    shutil.rmtree(d, ignore_errors=True)
            med = {k: statistics.median(r[k] for r in runs) for k in ("GBps", "cpu_ns_per_pkt", "Mpps")}
            rows.append({"mode": mode, "size": size, **med})
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

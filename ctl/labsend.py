"""Inject frames in order from inside a lab namespace: ``python -m
stenoxdp.labsend IFACE PPS`` reads <u32 little-endian length><frame> records
from stdin and sends each with one raw AF_PACKET sendto, paced at PPS;
prints the CLOCK_REALTIME ns taken right before each send, one per line.
Used only by the lab (tests and demo), never on the capture path."""
from __future__ import annotations

import socket
import struct
import sys
import time


def main() -> int:
    iface, pps = sys.argv[1], float(sys.argv[2])
    data = sys.stdin.buffer.read()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    gap = 1.0 / pps if pps > 0 else 0.0
    t_next = time.perf_counter()
    off = n = 0
    stamps = []
    while off < len(data):
        (ln,) = struct.unpack_from("<I", data, off)
        frame = data[off + 4 : off + 4 + ln]
        off += 4 + ln
        while True:
            try:
                t = time.time_ns()
                s.send(frame)
                stamps.append(t)
                break
            except BlockingIOError:
                time.sleep(0.0005)
        n += 1
        if gap:
            t_next += gap
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    sys.stdout.write("\n".join(map(str, stamps)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

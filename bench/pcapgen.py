"""Synthetic pcap files for the query and server benchmarks, built with numpy
(no per-packet Python): nanosecond pcap, Ethernet/IPv4 frames of one size,
UDP and TCP mixed, addresses only in 198.18.0.0/15.

Traffic shape (deterministic for a seed):
* 90 % of packets between hosts of 198.18.0.0/16, 10 % with one end in
  198.19.0.0/16 (so ``net 198.19.0.0/16`` selects about a tenth);
* HOT_HOST (198.18.7.7) is one end of about 0.1 % of packets;
* HOT_PORT (5353/udp) about 1 % of packets, the rest spread over many ports;
* timestamps evenly spread (with jitter, non-decreasing) over
  [end_ns - span_s, end_ns].
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HOT_HOST = "198.18.7.7"
HOT_PORT = 5353
NET16 = "198.19.0.0/16"


def _ip(a: int, b: int, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (a << 24) | (b << 16) | (c.astype(np.uint32) << 8) | d.astype(np.uint32)


def write_pcap(path: Path, n: int, end_ns: int, span_s: float = 1800.0, frame: int = 100, seed: int = 1,
               chunk: int = 500_000) -> int:
    """Write n packets; returns the file size in bytes."""
    rng = np.random.default_rng(seed)
    rec = 16 + frame
    hot = int(HOT_HOST.split(".")[2]), int(HOT_HOST.split(".")[3])
    start_ns = end_ns - int(span_s * 1e9)
    with open(path, "wb") as fh:
        # pcap header, nanosecond magic, snaplen 262144, linktype 1
        fh.write(np.array([0xA1B23C4D], "<u4").tobytes() + np.array([2, 4], "<u2").tobytes()
                 + np.array([0, 0, 262144, 1], "<u4").tobytes())
        done = 0
        while done < n:
            m = min(chunk, n - done)
            buf = np.zeros((m, rec), np.uint8)
            # float step: index * span in int64 overflows beyond ~5 M packets over 30 min
            ts = start_ns + (np.arange(done, done + m, dtype=np.float64) * ((end_ns - start_ns) / max(1, n))).astype(np.int64)
            hdr = buf[:, :16].view("<u4")
            hdr[:, 0] = (ts // 1_000_000_000).astype(np.uint32)
            hdr[:, 1] = (ts % 1_000_000_000).astype(np.uint32)
            hdr[:, 2] = frame
            hdr[:, 3] = frame
            f = buf[:, 16:]
            f[:, 0:6] = [0x02, 0x5E, 0, 0, 0, 2]
            f[:, 6:12] = [0x02, 0x5E, 0, 0, 0, 1]
            f[:, 12:14] = [0x08, 0x00]
            tcp = rng.random(m) < 0.5
            f[:, 14] = 0x45
            be16 = lambda col, v: f.__setitem__((slice(None), slice(col, col + 2)),  # noqa: E731
                                                np.asarray(v, ">u2").reshape(-1, 1).view(np.uint8).reshape(-1, 2))
            be16(16, np.full(m, frame - 14))
            f[:, 22] = 64
            f[:, 23] = np.where(tcp, 6, 17)
            # addresses
            src = _ip(198, 18, rng.integers(0, 64, m), rng.integers(1, 255, m))
            dst = _ip(198, 18, rng.integers(0, 64, m), rng.integers(1, 255, m))
            far = rng.random(m) < 0.10
            dst = np.where(far, _ip(198, 19, rng.integers(0, 256, m), rng.integers(1, 255, m)), dst)
            hot_mask = rng.random(m) < 0.001
            src = np.where(hot_mask, (198 << 24) | (18 << 16) | (hot[0] << 8) | hot[1], src).astype(np.uint32)
            f[:, 26:30] = src.astype(">u4").view(np.uint8).reshape(-1, 4)
            f[:, 30:34] = dst.astype(">u4").view(np.uint8).reshape(-1, 4)
            sport = rng.integers(1024, 65535, m)
            dport = rng.choice(np.array([80, 443, 53, 22, 8080, 123, 25, 993], np.int64), m)
            hp = rng.random(m) < 0.01
            dport = np.where(hp, HOT_PORT, dport)
            be16(34, sport)
            be16(36, dport)
            # UDP length / TCP data offset
            udp_len = np.full(m, frame - 34)
            f[:, 38:40] = np.where(tcp[:, None], 0, np.asarray(udp_len, ">u2").view(np.uint8).reshape(-1, 2))
            f[:, 46] = np.where(tcp, 0x50, f[:, 46])
            f[:, 47] = np.where(tcp, 0x18, f[:, 47])
            fh.write(buf.tobytes())
            done += m
    return os.path.getsize(path)


def count_records(nbytes: int, frame: int = 100) -> int:
    return max(0, (nbytes - 24) // (16 + frame))

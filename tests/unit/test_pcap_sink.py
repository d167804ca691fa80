"""The writer's file side: staging, O_DIRECT blocks, the flushed tail, the
.rec sidecar and the hidden-then-renamed hand-off, on real files."""
from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest

from stenoxdp import layout
from stenoxdp.store import Store
from stenoxdp.writer import PcapSink, pcap_global_header


def put(sink: PcapSink, ts_ns: int, frame: bytes, wirelen: int | None = None) -> None:
    """Stage one packet the way the native gather does (record header + bytes)."""
    wirelen = len(frame) if wirelen is None else wirelen
    rec = struct.pack("<IIII", ts_ns // 10**9, ts_ns % 10**9, len(frame), wirelen) + frame
    sink.st[sink.pos : sink.pos + len(rec)] = np.frombuffer(rec, dtype=np.uint8)
    r = sink.recs[sink.nrec]
    r["offset"], r["ts_ns"], r["caplen"], r["wirelen"] = sink.base + sink.pos, ts_ns, len(frame), wirelen
    sink.pos += len(rec)
    sink.nrec += 1


@pytest.mark.parametrize("mode", ["auto", "buffered"])
def test_sink_writes_readable_pcap_with_records(tmp_path, mode):
    store = Store(tmp_path / "s").init()
    sink = PcapSink(store, "eth9", 0, rotate_seconds=60, rotate_bytes=1 << 30, direct=mode, block=8192,
                    staging_size=1 << 20)
    sink.open_new()
    hidden = sink.pcap_path
    assert hidden.name.startswith(".") and hidden.exists()
    frames = [bytes([i % 256]) * (60 + (i * 37) % 1400) for i in range(500)]
    t = 1_700_000_000_123_456_789
    for i, f in enumerate(frames):
        put(sink, t + i * 1000, f, wirelen=len(f) + (7 if i == 3 else 0))
        if sink.pos >= sink.block:
            sink.write_blocks()
    sink.flush()
    # after a flush every staged packet is readable in the hidden file, records too
    size = hidden.stat().st_size
    assert size == sink.base + sink.pos
    recs = np.fromfile(sink.rec_path, dtype=layout.REC_DTYPE)
    assert len(recs) == len(frames)
    final = sink.close()
    assert final is not None and not final.name.startswith(".") and not hidden.exists()
    data = final.read_bytes()
    assert data[:24] == pcap_global_header()
    recs = np.fromfile(final.with_suffix(".rec"), dtype=layout.REC_DTYPE)
    for i, (r, f) in enumerate(zip(recs, frames)):
        off = int(r["offset"])
        sec, nsec, cap, wl = struct.unpack_from("<IIII", data, off)
        assert sec * 10**9 + nsec == t + i * 1000 == int(r["ts_ns"])
        assert data[off + 16 : off + 16 + cap] == f
        assert wl == len(f) + (7 if i == 3 else 0)
    # an independent reader agrees: every frame, with its lengths
    out = subprocess.run(["tshark", "-r", str(final), "-T", "fields", "-e", "frame.cap_len", "-e", "frame.len"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [tuple(map(int, line.split())) for line in out.stdout.splitlines()]
    assert rows == [(len(f), len(f) + (7 if i == 3 else 0)) for i, f in enumerate(frames)]


def test_sink_rotation_due_by_size_and_age(tmp_path):
    store = Store(tmp_path / "s").init()
    sink = PcapSink(store, "eth9", 1, rotate_seconds=0.05, rotate_bytes=4096, staging_size=1 << 20)
    sink.open_new()
    assert not sink.due(sink.opened_mono)
    assert sink.due(sink.opened_mono + 60_000_000)
    put(sink, 1, b"x" * 5000)
    assert sink.due(sink.opened_mono)
    assert sink.close().name.endswith(".pcap")
    assert not sink.is_open and sink.close() is None


def test_sink_never_exceeds_4gib_offsets(tmp_path):
    sink = PcapSink(Store(tmp_path / "s"), "e", 0, rotate_seconds=60, rotate_bytes=10 << 30)
    assert sink.rotate_bytes < 4 << 30

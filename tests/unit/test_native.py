"""The native helper (gcc build of bpf/parse.h + native/sxdp_native.c):
index_pcap vs the Python parser on the corpus written as pcap records, gather
on a synthetic UMEM laid out as the kernel lays it out (metadata right before
the frame), and random / truncated input that must never crash it."""
from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stenoxdp import layout as L
from stenoxdp.indexer.parse import meta_summary, parse_frame, summary
from tests.corpus.frames import BY_NAME, FRAMES

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is missing (run `make setup`)")


@pytest.fixture(scope="module")
def api():
    from stenoxdp.native import api as a
    from stenoxdp.native import lib

    lib()
    return a


def rec_expect(frame: bytes, ts_ns: int, offset: int, wirelen: int | None = None) -> dict:
    d = parse_frame(frame)
    wl = len(frame) if wirelen is None else wirelen
    flags = d["flags"] | (L.F_TRUNC if len(frame) < wl else 0)
    return {
        "offset": offset, "ts_ns": ts_ns, "caplen": len(frame), "wirelen": wl,
        "src": d["src"].ljust(16, b"\0"), "dst": d["dst"].ljust(16, b"\0"),
        "sport": d["sport"], "dport": d["dport"], "vlan": d["vlan"], "mpls": d["mpls"],
        "ethertype": d["ethertype"], "proto": d["ip_proto"], "flags": flags,
        "n_vlan": d["n_vlan"], "n_mpls": d["n_mpls"], "l3_off": d["l3_off"], "l4_off": d["l4_off"],
    }


def rec_got(r) -> dict:
    return {
        "offset": int(r["offset"]), "ts_ns": int(r["ts_ns"]), "caplen": int(r["caplen"]),
        "wirelen": int(r["wirelen"]), "src": bytes(r["src"]), "dst": bytes(r["dst"]),
        "sport": int(r["sport"]), "dport": int(r["dport"]), "vlan": [int(v) for v in r["vlan"]],
        "mpls": int(r["mpls"]), "ethertype": int(r["ethertype"]), "proto": int(r["proto"]),
        "flags": int(r["flags"]), "n_vlan": int(r["n_vlan"]), "n_mpls": int(r["n_mpls"]),
        "l3_off": int(r["l3_off"]), "l4_off": int(r["l4_off"]),
    }


def pcap_records(frames, t0=1_700_000_000, nsec=True):
    out, offs, tss = b"", [], []
    for i, f in enumerate(frames):
        sec, frac = t0 + i, (123456789 if nsec else 123456) + i
        offs.append(len(out))
        tss.append(sec * 1_000_000_000 + (frac if nsec else frac * 1000))
        out += struct.pack("<IIII", sec, frac, len(f), len(f)) + f
    return out, offs, tss


# ---------------------------------------------------------------- parser


def test_parse_matches_python_on_corpus(api):
    for name, f in FRAMES:
        meta, et = api.parse(f)
        d = parse_frame(f)
        assert meta_summary(meta) == summary(d), name
        assert et == d["ethertype"], name


def test_parse_many_matches_parse(api):
    frames = [f for _, f in FRAMES]
    metas, ets = api.parse_many(frames)
    for i, f in enumerate(frames):
        m, et = api.parse(f)
        assert metas[i].tobytes() == m.tobytes() and ets[i] == et


def test_every_truncation_matches_python(api):
    """Every corpus frame cut at every length up to 130 bytes: C == Python."""
    frames = [f[:n] for _, f in FRAMES for n in range(0, min(len(f), 130) + 1)]
    metas, ets = api.parse_many(frames)
    for i, f in enumerate(frames):
        d = parse_frame(f)
        assert meta_summary(metas[i]) == summary(d), f.hex()
        assert int(ets[i]) == d["ethertype"]


_ets = st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x8847, 0x8848, 0x0806, 0x1234])


@settings(max_examples=300, deadline=None)
@given(st.lists(_ets, min_size=1, max_size=4), st.binary(min_size=0, max_size=120))
def test_random_frames_match_python(api, ets, tail):
    """Random header soup (plausible ethertypes, random bytes): C == Python, no crash."""
    f = bytes(12)
    for et in ets:
        f += struct.pack(">H", et) + tail[:2]
    f += tail
    meta, et = api.parse(f)
    d = parse_frame(f)
    assert meta_summary(meta) == summary(d)
    assert et == d["ethertype"]


# ---------------------------------------------------------------- index_pcap


@pytest.mark.parametrize("nsec", [True, False])
def test_index_pcap_corpus(api, nsec):
    frames = [f for _, f in FRAMES]
    buf, offs, tss = pcap_records(frames, nsec=nsec)
    recs, consumed = api.index_pcap(buf, 24, nsec)
    assert consumed == len(buf)
    assert len(recs) == len(frames)
    assert recs.dtype == L.REC_DTYPE
    for i, f in enumerate(frames):
        assert rec_got(recs[i]) == rec_expect(f, tss[i], 24 + offs[i]), FRAMES[i][0]


def test_index_pcap_truncated_record_sets_trunc(api):
    f = BY_NAME["udp4_1514"][:200]
    buf = struct.pack("<IIII", 1, 2, len(f), 1514) + f
    recs, consumed = api.index_pcap(buf, 0, True)
    assert consumed == len(buf)
    assert rec_got(recs[0]) == rec_expect(f, 1_000_000_002, 0, wirelen=1514)
    assert recs[0]["flags"] & L.F_TRUNC


def test_index_pcap_stops_at_partial_record(api):
    frames = [BY_NAME["tcp4_60"], BY_NAME["udp6_1514"], BY_NAME["qinq_udp4"]]
    buf, offs, _ = pcap_records(frames)
    for cut in (offs[2] + 5, offs[2] + 16, offs[2] + 20, len(buf) - 1):
        recs, consumed, status = api.index_pcap(buf[:cut], 100, True, with_status=True)
        assert (len(recs), consumed, status) == (2, offs[2], api.IDX_END)
    recs, consumed, status = api.index_pcap(b"", 0, True, with_status=True)
    assert (len(recs), consumed, status) == (0, 0, api.IDX_END)


def test_index_pcap_reports_corrupt_record(api):
    frames = [BY_NAME["tcp4_60"], BY_NAME["tcp6"]]
    buf, offs, _ = pcap_records(frames)
    buf += struct.pack("<IIII", 1, 1, 300 * 1024, 300 * 1024) + bytes(64)
    recs, consumed, status = api.index_pcap(buf, 24, True, with_status=True)
    assert status == api.IDX_CORRUPT
    assert len(recs) == 2 and consumed == len(buf) - 16 - 64


def test_index_pcap_max_recs_and_chunking(api):
    frames = [BY_NAME["tcp4_60"]] * 5000
    buf, offs, tss = pcap_records(frames)
    recs, consumed, status = api.index_pcap(buf, 24, True, max_recs=1000, with_status=True)
    assert (len(recs), consumed, status) == (1000, offs[1000], api.IDX_FULL)
    recs, consumed = api.index_pcap(np.frombuffer(buf, np.uint8), 24, True)
    assert len(recs) == 5000 and consumed == len(buf)
    assert np.array_equal(recs["offset"], np.array(offs, np.uint64) + 24)
    assert np.array_equal(recs["ts_ns"], np.array(tss, np.uint64))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_index_pcap_garbage_never_crashes(api, junk):
    recs, consumed, status = api.index_pcap(junk, 0, True, with_status=True)
    assert consumed <= len(junk)
    assert int(recs["caplen"].astype(np.uint64).sum()) + 16 * len(recs) == consumed


# ---------------------------------------------------------------- gather

CHUNK = 2048
HEADROOM = 256


class FakeUmem:
    """A UMEM laid out as the kernel fills it in copy mode: each frame at
    chunk*i + 256 (XDP_PACKET_HEADROOM), the 32-byte metadata right before."""

    def __init__(self, nchunks=64, ring=32):
        self.mem = np.zeros(nchunks * CHUNK, np.uint8)
        self.descs = np.zeros(ring, dtype=[("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])
        self.mask = ring - 1

    def put(self, slot: int, chunk: int, frame: bytes, ts_ns: int, wirelen: int | None = None,
            meta_override: dict | None = None):
        addr = chunk * CHUNK + HEADROOM
        d = parse_frame(frame)
        meta = np.zeros(1, L.META_DTYPE)
        for k in ("l3_off", "l4_off", "ip_proto", "flags", "n_vlan", "n_mpls", "mpls"):
            meta[k] = d[k]
        meta["vlan"] = d["vlan"]
        meta["ts_sec"], meta["ts_nsec"] = divmod(ts_ns, 1_000_000_000)
        meta["caplen"] = len(frame)
        meta["len"] = len(frame) if wirelen is None else wirelen
        if wirelen is not None and wirelen > len(frame):
            meta["flags"] |= L.F_TRUNC
        for k, v in (meta_override or {}).items():
            meta[k] = v
        self.mem[addr - 32:addr] = np.frombuffer(meta.tobytes(), np.uint8)
        self.mem[addr:addr + len(frame)] = np.frombuffer(frame, np.uint8)
        self.descs[slot & self.mask] = (addr, len(frame), 0)
        return addr


def test_gather_corpus_wrapping_ring(api):
    u = FakeUmem(nchunks=80, ring=32)
    frames = [f for n, f in FRAMES if len(f) <= CHUNK - HEADROOM][:30]
    start = 20  # wraps around the 32-entry ring
    t0 = 1_750_000_000_000_000_000
    for i, f in enumerate(frames):
        u.put(start + i, i + 3, f, t0 + i * 1000)
    out = np.zeros(1 << 16, np.uint8)
    recs = np.zeros(64, L.REC_DTYPE)
    nbytes, ndone, nbad = api.gather(u.mem, u.descs, u.mask, start, len(frames), out, 4096, recs)
    assert (ndone, nbad) == (len(frames), 0)
    want, pos = b"", 0
    for i, f in enumerate(frames):
        ts = t0 + i * 1000
        want += struct.pack("<IIII", ts // 10**9, ts % 10**9, len(f), len(f)) + f
        assert rec_got(recs[i]) == rec_expect(f, ts, 4096 + pos), FRAMES[i][0]
        pos += 16 + len(f)
    assert nbytes == len(want) and out[:nbytes].tobytes() == want


def test_gather_truncated_frame_keeps_wire_length(api):
    u = FakeUmem()
    f = BY_NAME["udp4_1514"][:1000]
    u.put(0, 0, f, 5 * 10**9 + 7, wirelen=1514)
    out = np.zeros(4096, np.uint8)
    recs = np.zeros(4, L.REC_DTYPE)
    nbytes, ndone, nbad = api.gather(u.mem, u.descs, u.mask, 0, 1, out, 0, recs)
    assert (nbytes, ndone, nbad) == (1016, 1, 0)
    assert struct.unpack("<IIII", out[:16].tobytes()) == (5, 7, 1000, 1514)
    assert recs[0]["wirelen"] == 1514 and recs[0]["caplen"] == 1000 and recs[0]["flags"] & L.F_TRUNC


def test_gather_stops_when_out_is_full(api):
    u = FakeUmem()
    f = BY_NAME["tcp4_60"]
    for i in range(10):
        u.put(i, i, f, 10**9)
    out = np.zeros(3 * 76 + 75, np.uint8)  # room for 3 records, not 4
    recs = np.zeros(10, L.REC_DTYPE)
    nbytes, ndone, nbad = api.gather(u.mem, u.descs, u.mask, 0, 10, out, 0, recs)
    assert (nbytes, ndone, nbad) == (3 * 76, 3, 0)
    recs2 = np.zeros(2, L.REC_DTYPE)  # recs array bounds n too
    assert api.gather(u.mem, u.descs, u.mask, 0, 10, np.zeros(4096, np.uint8), 0, recs2) == (152, 2, 0)


def test_gather_skips_bad_descriptors(api):
    u = FakeUmem(nchunks=8, ring=8)
    good = BY_NAME["tcp6"]
    u.put(0, 0, good, 10**9)
    u.descs[1] = (10, 60, 0)  # addr < 32: no room for metadata
    u.descs[2] = (u.mem.nbytes - 10, 60, 0)  # runs past the UMEM
    u.descs[3] = (1 << 40, 60, 0)  # far outside
    u.descs[4] = (CHUNK + HEADROOM, 0, 0)  # empty
    u.put(5, 2, BY_NAME["tcp4_60"], 2 * 10**9)
    out = np.zeros(4096, np.uint8)
    recs = np.zeros(8, L.REC_DTYPE)
    nbytes, ndone, nbad = api.gather(u.mem, u.descs, u.mask, 0, 6, out, 0, recs)
    assert (ndone, nbad) == (6, 4)
    assert nbytes == 16 + len(good) + 16 + 60
    assert recs[0]["caplen"] == len(good) and recs[1]["caplen"] == 60 and recs[1]["offset"] == 16 + len(good)


def test_gather_distrusts_metadata_offsets(api):
    """Offsets in (corrupt) metadata beyond caplen never read past the frame."""
    u = FakeUmem()
    f = BY_NAME["tcp4_60"]
    u.put(0, 0, f, 10**9, meta_override={"l3_off": 50, "l4_off": 58, "flags": L.F_IPV4 | L.F_PORTS | L.F_L4})
    out = np.zeros(4096, np.uint8)
    recs = np.zeros(1, L.REC_DTYPE)
    api.gather(u.mem, u.descs, u.mask, 0, 1, out, 0, recs)
    r = recs[0]
    assert r["flags"] & L.F_MALFORMED and not r["flags"] & (L.F_IPV4 | L.F_PORTS)
    assert bytes(r["src"]) == bytes(16) and r["sport"] == 0

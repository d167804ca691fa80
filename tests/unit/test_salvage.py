"""Salvage of hand-made partial files: cut mid-record, mid-header, header only, empty, zero tail;
interrupted deletions; orphans; idempotence (a second salvage changes nothing)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from stenoxdp.layout import REC_DTYPE
from stenoxdp.retention import TOMB_SUFFIX
from stenoxdp.salvage import PCAP_HDR, salvage_store, walk_records
from stenoxdp.store import Store

S = 1_000_000_000
STAMP = 1_700_000_000 * S
IFACE = "eth1"


def gh(nsec=True):
    return struct.pack("<IHHiIII", 0xA1B23C4D if nsec else 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def packet(i: int, n: int = 60) -> bytes:
    return bytes([i % 256]) * n


def pcap_bytes(count: int, nsec=True, base_ts=STAMP):
    out = bytearray(gh(nsec))
    offs = []
    for i in range(count):
        p = packet(i, 60 + i)
        ts = base_ts + i * 1000
        offs.append(len(out))
        frac = ts % S if nsec else (ts % S) // 1000
        out += struct.pack("<IIII", ts // S, frac, len(p), len(p) + 4) + p
    return bytes(out), offs


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store").init()
    s.queue_dir(IFACE, 0).mkdir(parents=True)
    s.index_queue_dir(IFACE, 0).mkdir(parents=True)
    return s


def write_open(store, data: bytes, stamp=STAMP, rec: bytes | None = None):
    pcap, recp = store.open_paths(IFACE, 0, stamp)
    pcap.write_bytes(data)
    if rec is not None:
        recp.write_bytes(rec)
    return pcap, recp


def listing(store):
    return sorted(p.name for p in store.queue_dir(IFACE, 0).iterdir()), \
        sorted(p.name for p in store.index_queue_dir(IFACE, 0).iterdir())


def final(store, stamp=STAMP):
    return store.final_paths(IFACE, 0, stamp)


def recs_of(path):
    return np.frombuffer(path.read_bytes(), dtype=REC_DTYPE)


def test_walker_matches_what_was_written():
    data, offs = pcap_bytes(5)
    o, ts, cap, wl, end = walk_records(data, PCAP_HDR)
    assert list(o) == offs and end == len(data) and list(cap) == [60 + i for i in range(5)]
    assert list(wl) == [64 + i for i in range(5)] and int(ts[1]) == STAMP + 1000


@pytest.mark.parametrize("nsec", [True, False])
def test_cut_mid_record_keeps_every_complete_packet(store, nsec):
    data, offs = pcap_bytes(10, nsec=nsec)
    cut = offs[7] + 16 + 20  # inside packet 7's data
    write_open(store, data[:cut])
    rep = salvage_store(store, index_pcap=None)
    pcap, rec, _ = final(store)
    assert pcap.read_bytes() == data[: offs[7]]  # 7 complete packets, the cut record dropped
    r = recs_of(rec)
    assert list(r["offset"]) == offs[:7] and list(r["caplen"]) == [60 + i for i in range(7)]
    assert int(r["ts_ns"][6]) == STAMP + 6000  # timestamps survive (us pcap: whole microseconds)
    assert pcap.stat().st_mtime_ns == STAMP + 6000  # mtime = last packet time (retention's age)
    assert rep.salvaged[0]["packets"] == 7 and rep.salvaged[0]["cut"] == cut - offs[7]
    assert listing(store) == ([pcap.name, rec.name], [])


def test_cut_mid_record_header(store):
    data, offs = pcap_bytes(4)
    write_open(store, data[: offs[3] + 9])
    salvage_store(store, index_pcap=None)
    pcap, rec, _ = final(store)
    assert pcap.read_bytes() == data[: offs[3]] and len(recs_of(rec)) == 3


def test_complete_file_left_open_is_kept_whole(store):
    data, offs = pcap_bytes(3)
    write_open(store, data)
    salvage_store(store, index_pcap=None)
    assert final(store)[0].read_bytes() == data


@pytest.mark.parametrize("size", [0, 10, 24, 24 + 9])
def test_no_complete_packet_is_removed(store, size):
    data, _ = pcap_bytes(1)
    write_open(store, data[:size], rec=b"")
    rep = salvage_store(store, index_pcap=None)
    assert listing(store) == ([], [])
    assert rep.removed and not rep.salvaged


def test_not_pcap_is_removed(store):
    write_open(store, b"garbage!" * 10)
    rep = salvage_store(store, index_pcap=None)
    assert listing(store) == ([], []) and "not a pcap" in rep.removed[0]["why"]


def test_zero_tail_from_preallocation_is_cut(store):
    data, offs = pcap_bytes(5)
    write_open(store, data + b"\0" * 4096)
    salvage_store(store, index_pcap=None)
    pcap, rec, _ = final(store)
    assert pcap.read_bytes() == data and len(recs_of(rec)) == 5


def test_writer_records_are_reused_where_they_match(store):
    data, offs = pcap_bytes(6)
    w = np.zeros(4, dtype=REC_DTYPE)  # the writer had flushed records for 4 packets
    w["offset"] = offs[:4]
    w["caplen"] = [60, 61, 62, 63]
    w["proto"] = 17
    w["sport"] = 53
    write_open(store, data, rec=w.tobytes() + b"\1" * 30)  # and a cut record
    salvage_store(store, index_pcap=None)
    r = recs_of(final(store)[1])
    assert list(r["proto"]) == [17] * 4 + [0, 0] and list(r["offset"]) == offs
    assert not store.open_paths(IFACE, 0, STAMP)[1].exists()


def test_native_helper_is_used_when_given(store):
    data, offs = pcap_bytes(4)
    write_open(store, data[:-5])
    calls = []

    def fake_index(buf, base_off, nsec):
        o, ts, cap, wl, end = walk_records(bytes(buf), 0)
        r = np.zeros(len(o), dtype=REC_DTYPE)
        r["offset"], r["ts_ns"], r["caplen"], r["wirelen"] = o + base_off, ts, cap, wl
        r["flags"] = 0x01
        calls.append((base_off, nsec))
        return r, end

    salvage_store(store, index_pcap=fake_index)
    r = recs_of(final(store)[1])
    assert calls == [(PCAP_HDR, True)] and list(r["offset"]) == offs[:3] and set(r["flags"]) == {1}
    assert final(store)[0].read_bytes() == data[: offs[3]]


def test_stale_index_of_open_file_is_dropped(store):
    data, _ = pcap_bytes(2)
    write_open(store, data)
    idx = final(store)[2]
    idx.mkdir()
    (idx / "x.sst").write_bytes(b"old")
    salvage_store(store, index_pcap=None)
    assert not idx.exists() and final(store)[1].exists()


def test_interrupted_deletion_is_finished(store):
    data, _ = pcap_bytes(2)
    pcap, rec, idx = final(store)
    d = store.queue_dir(IFACE, 0)
    (d / f".{STAMP:019d}{TOMB_SUFFIX}").write_bytes(data)  # step 1 done, crash
    rec.write_bytes(b"\0" * 80)
    idx.mkdir()
    rep = salvage_store(store, index_pcap=None)
    assert listing(store) == ([], []) and len(rep.deletions_finished) == 1
    assert not salvage_store(store, index_pcap=None)  # nothing left: never deleted twice


def test_orphans_removed_pairs_kept(store):
    d, idir = store.queue_dir(IFACE, 0), store.index_queue_dir(IFACE, 0)
    data, _ = pcap_bytes(2)
    good = STAMP
    pcap, rec, idx = final(store, good)
    pcap.write_bytes(data)
    idx.mkdir()  # indexed pair: kept
    unindexed = STAMP + S
    p2, r2, _ = final(store, unindexed)
    p2.write_bytes(data)
    r2.write_bytes(b"\0" * 80)  # waiting for the indexer: kept
    (d / f"{STAMP + 2 * S:019d}.rec").write_bytes(b"\0" * 80)  # orphan record file
    (d / f".{STAMP + 3 * S:019d}.rec").write_bytes(b"\0" * 80)  # orphan hidden record file
    (idir / f"{STAMP + 4 * S:019d}.idx").mkdir()  # orphan index
    (idir / f".{STAMP + 5 * S:019d}.idx.tmp").mkdir()  # index build cut short
    (d / "README").write_text("not ours")  # unknown names are left alone
    rep = salvage_store(store, index_pcap=None)
    assert listing(store) == (sorted([pcap.name, p2.name, r2.name, "README"]), [idx.name])
    assert len(rep.removed) == 4
    assert not salvage_store(store, index_pcap=None)


def test_completed_file_without_records_gets_them_back(store):
    data, offs = pcap_bytes(3)
    pcap, rec, _ = final(store)
    pcap.write_bytes(data)
    rep = salvage_store(store, index_pcap=None)
    assert list(recs_of(rec)["offset"]) == offs and rep.recs_rebuilt == [str(pcap)]


def test_salvage_is_idempotent_after_partial_run(store):
    data, offs = pcap_bytes(5)
    pcap_h, _ = write_open(store, data[:-3])
    # a crash during salvage after the records were written but before the rename
    pcap, rec, _ = final(store)
    rec.write_bytes(b"\0" * 80)
    salvage_store(store, index_pcap=None)
    salvage_store(store, index_pcap=None)
    assert pcap.read_bytes() == data[: offs[4]] and len(recs_of(rec)) == 4
    assert listing(store) == ([pcap.name, rec.name], [])


def test_files_open_by_a_live_process_are_left_alone(store):
    """Another interface's writer sharing the store (or another daemon) has its file open."""
    data, offs = pcap_bytes(3)
    pcap_h, rec_h = write_open(store, data[:-5], rec=b"\0" * 80)
    _, _, idx = final(store, STAMP + S)
    idx.mkdir()  # an index some reader holds open, whose pcap is also open
    (idx / "CURRENT").write_bytes(b"x")
    p2 = final(store, STAMP + S)[0]
    p2.write_bytes(data)
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; fs=[open(p,'rb') for p in sys.argv[1:]]; "
                               "print('ok', flush=True); time.sleep(30)", str(pcap_h), str(idx / "CURRENT")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        rep = salvage_store(store, index_pcap=None)
        assert pcap_h.read_bytes() == data[:-5] and rec_h.exists() and idx.exists()
        assert not rep.salvaged and not rep.removed
    finally:
        holder.kill()
        holder.wait()
    salvage_store(store, index_pcap=None)  # once it is gone, the partial file is salvaged
    assert final(store)[0].read_bytes() == data[: offs[2]]


def test_with_the_real_native_helper(store):
    api = pytest.importorskip("stenoxdp.native.api")
    body = struct.pack(">HHHH", 5353, 53, 12, 0) + b"abcd"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0, b"\xc6\x12\x00\x01",
                     b"\xc6\x12\x00\x02") + body
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + bytes(10)
    out = bytearray(gh())
    offs = []
    for i in range(50):
        offs.append(len(out))
        out += struct.pack("<IIII", STAMP // S + i, 7, len(frame), len(frame)) + frame
    write_open(store, bytes(out) + b"\0" * 3000)  # a zero tail after the last record
    rep = salvage_store(store)  # "auto": the native helper
    r = recs_of(final(store)[1])
    assert list(r["offset"]) == offs and set(r["proto"]) == {17} and set(r["dport"]) == {53}
    assert final(store)[0].read_bytes() == bytes(out) and rep.salvaged[0]["packets"] == 50


def test_index_build_in_this_process_is_left_alone(store):
    """salvage_queue runs inside the daemon when a writer is restarted; the daemon's own indexer may be
    building an index of this queue at that moment."""
    tmp = store.index_queue_dir(IFACE, 0) / f".{STAMP:019d}.idx.tmp"
    tmp.mkdir()
    with open(tmp / "000001.log", "wb"):
        assert not salvage_store(store, index_pcap=None)
        assert tmp.exists()
    salvage_store(store, index_pcap=None)
    assert not tmp.exists()

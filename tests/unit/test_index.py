"""Index build/read on real RocksDB: every key type's postings equal a numpy
mask over the records; table, time seeks, version check, index_completed."""
import os

import numpy as np
import pytest

from stenoxdp import layout
from stenoxdp.errors import IndexFormatError, StoreError
from stenoxdp.indexer import index as I
from stenoxdp.indexer import keys as K
from stenoxdp.store import Store

from ._randrecs import rand_recs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    r = rand_recs(20000, seed=3)
    p = tmp_path_factory.mktemp("idx") / "x.idx"
    I.build_index(r, p)
    rd = I.IndexReader(p)
    yield r, rd, p
    rd.close()


def _nz(m):
    return np.flatnonzero(m)


def test_postings_equal_masks(built):
    r, rd, _ = built
    fl = r["flags"]
    ip4, ip6 = (fl & layout.F_IPV4) != 0, (fl & layout.F_IPV6) != 0
    ports = (fl & layout.F_PORTS) != 0
    assert np.array_equal(rd.get(K.proto_key(6)), _nz((ip4 | ip6) & (r["proto"] == 6)))
    for p in (53, 443, 65535, 0, 9):
        assert np.array_equal(rd.get(K.port_key(p, True)), _nz(ports & (r["sport"] == p)))
        assert np.array_equal(rd.get(K.port_key(p, False)), _nz(ports & (r["dport"] == p)))
    a = bytes([198, 18, 0, 3])
    assert np.array_equal(rd.get(K.addr_key(a, True)), _nz(ip4 & np.all(r["src"][:, :4] == list(a), axis=1)))
    assert np.array_equal(rd.get(K.addr_key(a, False)), _nz(ip4 & np.all(r["dst"][:, :4] == list(a), axis=1)))
    a6 = bytes([0x20, 1, 0xD, 0xB8] + [0] * 11 + [2])
    assert np.array_equal(rd.get(K.addr_key(a6, True)), _nz(ip6 & np.all(r["src"] == list(a6), axis=1)))
    lo, hi = K.addr_range(bytes([10, 0, 0, 0]), 8, False)
    assert np.array_equal(rd.range(lo, hi), _nz(ip4 & (r["dst"][:, 0] == 10)))
    lo, hi = K.port_range(1, 1234, True)
    assert np.array_equal(rd.range(lo, hi), _nz(ports & (r["sport"] >= 1) & (r["sport"] <= 1234)))
    v = r["vlan"]
    assert np.array_equal(rd.get(K.vlan_key(10)), _nz(((r["n_vlan"] > 0) & (v[:, 0] == 10)) | ((r["n_vlan"] > 1) & (v[:, 1] == 10))))
    assert np.array_equal(rd.get(K.mpls_key(1048575)), _nz((r["n_mpls"] > 0) & (r["mpls"] == 1048575)))
    assert np.array_equal(rd.get(K.family_key(6)), _nz(ip6))
    assert len(rd.get(K.port_key(7, True))) == 0


def test_nonfirst_fragments_get_no_port_keys(tmp_path):
    r = rand_recs(100, seed=4)
    r["flags"] |= layout.F_IPV4 | layout.F_PORTS
    r["flags"][::2] |= layout.F_NONFIRST_FRAG
    r["sport"] = 80
    I.build_index(r, tmp_path / "f.idx")
    with I.IndexReader(tmp_path / "f.idx") as rd:
        assert np.array_equal(rd.get(K.port_key(80, True)), np.arange(1, 100, 2))


def test_table_and_time(built):
    r, rd, _ = built
    assert rd.count == len(r) and rd.first_ts == int(r["ts_ns"].min()) and rd.last_ts == int(r["ts_ns"].max())
    sel = np.array([0, 1, 4095, 4096, 8191, 19999, 12345])
    off, ts, ln = rd.table(sel)
    assert np.array_equal(off, r["offset"][sel].astype(np.int64))
    assert np.array_equal(ts, r["ts_ns"][sel].astype(np.int64))
    assert np.array_equal(ln, r["caplen"][sel].astype(np.int64) + 16)
    t = r["ts_ns"].astype(np.int64)
    lo, hi = int(t[777]) + 1, int(t[15000])
    assert np.array_equal(rd.time_range(lo, hi), _nz((t >= lo) & (t < hi)))
    assert np.array_equal(rd.time_range(None, lo), _nz(t < lo))
    assert len(rd.time_range(int(t.max()) + 1, None)) == 0


def test_unknown_version_refused(tmp_path):
    import rocksdict

    p = tmp_path / "v.idx"
    I.build_index(rand_recs(10), p)
    db = rocksdict.Rdict(str(p), rocksdict.Options(raw_mode=True))
    db[K.META_VERSION] = K.u32(99)
    db.close()
    with pytest.raises(IndexFormatError, match="format version 99"):
        I.IndexReader(p)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(StoreError, match="missing"):
        I.IndexReader(tmp_path / "nope.idx")
    p = tmp_path / "c.idx"
    I.build_index(rand_recs(10), p)
    for f in p.iterdir():
        if f.suffix == ".sst" or f.name.startswith("MANIFEST"):
            f.write_bytes(b"garbage" * 10)
    with pytest.raises(StoreError):
        I.IndexReader(p)


def test_index_completed(tmp_path):
    st = Store(tmp_path).init()
    r = rand_recs(500, seed=5)
    for stamp in (1, 2):
        pcap, rec, idx = st.final_paths("eth9", 0, stamp)
        pcap.parent.mkdir(parents=True, exist_ok=True)
        pcap.write_bytes(b"\0" * (int(r["offset"][-1]) + 16 + int(r["caplen"][-1])))
        rec.write_bytes(r.tobytes())
    hp, hr = st.open_paths("eth9", 0, 3)
    hp.write_bytes(b"\0" * 100)
    hr.write_bytes(b"")
    assert I.index_completed(st) == 2
    files = st.files()
    assert [f.indexed for f in files] == [True, True, False]
    assert not files[0].rec.exists() and files[2].rec.exists()
    with I.IndexReader(files[1].idx) as rd:
        assert rd.count == 500
    assert I.index_completed(st) == 0


def test_read_recs_drops_records_past_pcap_end(tmp_path):
    r = rand_recs(50, seed=6)
    p = tmp_path / "a.rec"
    p.write_bytes(r.tobytes() + b"\1" * 30)  # a partial record at the end
    assert len(I.read_recs(p)) == 50
    cut = int(r["offset"][40]) + 16 + int(r["caplen"][40])
    assert len(I.read_recs(p, cut)) == 41

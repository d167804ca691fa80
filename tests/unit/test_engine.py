"""Query engine over a real store (real RocksDB indexes, .rec-only and open
files, several ifaces and queues): every answer equals the records-level
evaluation (qlang.eval_records) merged by time, byte for byte; limits,
microsecond output, streaming, bad/corrupt/unknown-version indexes."""
import struct

import numpy as np
import pytest

from stenoxdp.errors import QueryError
from stenoxdp.indexer import engine, qlang
from stenoxdp.indexer import index as I
from stenoxdp.indexer import keys as K
from stenoxdp.store import Store

from ._randrecs import rand_recs

T0 = 1_700_000_000_000_000_000


def _pcap_bytes(recs, rng):
    """A nanosecond pcap whose records sit at recs['offset'] with random frame bytes."""
    out = bytearray(engine.pcap_header())
    for r in recs:  # test data only
        out += struct.pack("<IIII", int(r["ts_ns"]) // 10**9, int(r["ts_ns"]) % 10**9, int(r["caplen"]), int(r["wirelen"]))
        out += rng.integers(0, 256, int(r["caplen"]), dtype=np.uint8).tobytes()
    return bytes(out)


def _make_store(root, layout_spec, seed=0):
    """layout_spec: list of (iface, queue, n_packets, state) with state in
    indexed / rec / open. Returns (store, list of (seq-ordered) (recs, pcap bytes))."""
    st = Store(root).init()
    rng = np.random.default_rng(seed)
    files = []
    for i, (ifc, q, n, state) in enumerate(layout_spec):
        t0 = T0 + int(rng.integers(0, 10**9))  # files overlap in time
        r = rand_recs(n, seed=seed * 100 + i, t0=t0, sizes=(60, 300))
        data = _pcap_bytes(r, rng)
        stamp = t0 + i
        if state == "open":
            pcap, rec = st.open_paths(ifc, q, stamp)
            idx = None
        else:
            pcap, rec, idx = st.final_paths(ifc, q, stamp)
        pcap.parent.mkdir(parents=True, exist_ok=True)
        pcap.write_bytes(data)
        if state == "indexed":
            I.build_index(r, idx, len(data))
        else:
            rec.write_bytes(r.tobytes())
        files.append((stamp, ifc, q, r, data))
    files.sort(key=lambda f: (f[0], f[1], f[2]))
    return st, files


def _expected(files, node, micros=False):
    parts = []
    for seq, (_, ifc, q, r, data) in enumerate(files):
        m = qlang.eval_records(node, r)
        sel = np.flatnonzero(m)
        parts.append((r["ts_ns"][sel].astype(np.int64), np.full(len(sel), seq), sel, data, r))
    keys = [(int(t), s, int(o)) for ts, seqs, sel, _, _ in parts for t, s, o in zip(ts, seqs, sel)]
    keys.sort()
    out = []
    for t, s, o in keys:
        r, data = files[s][3], files[s][4]
        off, cap = int(r["offset"][o]), int(r["caplen"][o])
        rec = bytearray(data[off : off + 16 + cap])
        if micros:
            struct.pack_into("<I", rec, 4, (t % 10**9) // 1000)
        out.append(bytes(rec))
    return out


SPEC = [("eth0", 0, 3000, "indexed"), ("eth0", 1, 2500, "indexed"), ("eth0", 0, 900, "rec"),
        ("eth1", 0, 2000, "indexed"), ("eth1", 0, 700, "open"), ("eth0", 1, 10, "indexed")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("st"), SPEC, seed=1)


def _run(st, text, **kw):
    s = engine.query(st, text, now_ns=T0 + 5 * 10**9, **kw)
    data = s.read_all()
    return s, data


def _split(data):
    assert data[:4] in (struct.pack("<I", engine.PCAP_MAGIC_NS), struct.pack("<I", engine.PCAP_MAGIC_US))
    out, p = [], 24
    while p < len(data):
        cap = struct.unpack_from("<I", data, p + 8)[0]
        out.append(data[p : p + 16 + cap])
        p += 16 + cap
    return out


FIXED = ["tcp", "udp and port 53", "host 198.18.0.3", "src host 198.18.0.3 and not dst port 80",
         "net 10.0.0.0/8 or ip6", "vlan 10", "vlan 30", "mpls 1000", "icmp or icmp6", "not ip and not ip6",
         "portrange 1-1234", "dst net 2001:db8::/126", "ip proto 58", "not tcp", "host 2001:DB8::2"]


@pytest.mark.parametrize("text", FIXED)
def test_fixed_queries(store, text):
    st, files = store
    s, data = _run(st, text)
    want = _expected(files, qlang.parse(text, now_ns=T0 + 5 * 10**9))
    got = _split(data)
    assert got == want
    assert s.packets == len(want) and s.bytes == len(data) and not s.truncated and not s.warnings


def test_random_queries_match_records(store):
    st, files = store
    rng = np.random.default_rng(7)
    for _ in range(60):
        text = qlang.random_query(rng)
        want = _expected(files, qlang.parse(text))
        assert _split(_run(st, text)[1]) == want, text


def test_time_bounds_exact(store):
    st, files = store
    all_ts = np.sort(np.concatenate([f[3]["ts_ns"] for f in files]).astype(np.int64))
    a, b = int(all_ts[1000]), int(all_ts[5000])
    node = qlang.And(qlang.After(a), qlang.Before(b))
    text = qlang.format(node)
    s, data = _run(st, text)
    got = _split(data)
    assert got == _expected(files, qlang.parse(text))
    assert len(got) == 4000
    node = qlang.And(qlang.Proto(6), qlang.Not(qlang.Before(b)))
    text = qlang.format(node)
    assert _split(_run(st, text)[1]) == _expected(files, qlang.parse(text))


def test_time_only_and_iface(store):
    st, files = store
    got = _split(_run(st, "after 2000-01-01T00:00:00Z")[1])
    assert len(got) == sum(len(f[3]) for f in files)
    ts = [struct.unpack_from("<II", g) for g in got]
    assert ts == sorted(ts)
    got1 = _split(_run(st, "ip or not ip", iface="eth1")[1])
    assert len(got1) == sum(len(f[3]) for f in files if f[1] == "eth1")


def test_limits(store):
    st, files = store
    want = _expected(files, qlang.parse("tcp"))
    s, data = _run(st, "tcp", limit_packets=7)
    assert _split(data) == want[:7] and s.truncated and s.packets == 7
    # bytes: header counts 16, each packet len+16; stop after the packet that reaches the limit
    sizes = np.cumsum([len(w) for w in want]) + 16
    lim = int(sizes[10]) - 5
    s, data = _run(st, "tcp", limit_bytes=lim)
    assert _split(data) == want[:11] and s.truncated
    s, data = _run(st, "tcp", limit_bytes=int(sizes[10]))
    assert _split(data) == want[:11]
    s, data = _run(st, "tcp", limit_packets=len(want))
    assert len(_split(data)) == len(want) and not s.truncated


def test_micros(store):
    st, files = store
    s, data = _run(st, "udp", micros=True)
    assert data[:4] == struct.pack("<I", engine.PCAP_MAGIC_US)
    assert _split(data) == _expected(files, qlang.parse("udp"), micros=True)


def test_streams_before_done(store):
    st, _ = store
    s = engine.query(st, "ip or not ip")
    it = iter(s)
    assert len(next(it)) == 24
    first = next(it)
    assert len(first) > 0 and s.packets > 0 and s.packets < 11110
    s.close()


def test_bad_query_raises_at_call(store):
    st, _ = store
    with pytest.raises(QueryError):
        engine.query(st, "host 1.2.3")
    with pytest.raises(QueryError):
        engine.query(st, "port 80 and")


def test_empty_answer_and_empty_store(store, tmp_path):
    st, _ = store
    s, data = _run(st, "host 203.0.113.1")
    assert data == engine.pcap_header() and s.packets == 0
    s, data = _run(Store(tmp_path / "none"), "tcp")
    assert data == engine.pcap_header()


def test_broken_indexes_warn_and_others_answer(tmp_path):
    st, files = _make_store(tmp_path, [("e", 0, 500, "indexed"), ("e", 0, 400, "indexed"), ("e", 0, 300, "indexed")], seed=3)
    fs = st.files()
    # unknown version on the first, corrupt DB on the second
    import rocksdict

    db = rocksdict.Rdict(str(fs[0].idx), rocksdict.Options(raw_mode=True))
    db[K.META_VERSION] = K.u32(42)
    db.close()
    for f in fs[1].idx.iterdir():
        if f.suffix == ".sst":
            f.write_bytes(b"x" * 100)
    s, data = _run(st, "ip or not ip")
    got = _split(data)
    assert any("format version 42" in w for w in s.warnings)
    assert any(str(fs[1].idx) in w for w in s.warnings)
    # fallback: both broken files are scanned with the native parser, so every packet is there
    assert len(got) == 1200


def test_coverage(store):
    st, files = store
    cov = {c["iface"]: c for c in engine.coverage(st)}
    assert set(cov) == {"eth0", "eth1"}
    e0 = [f for f in files if f[1] == "eth0"]
    assert cov["eth0"]["packets"] == sum(len(f[3]) for f in e0)
    assert cov["eth0"]["files"] == len(e0)
    assert cov["eth0"]["first_ts_ns"] == min(int(f[3]["ts_ns"].min()) for f in e0)


# ---- import / reindex / CLI ----------------------------------------------------------
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

from stenoxdp.indexer import importer, pcapio  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "varied.pcap"
needs_editcap = pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap (wireshark-common) not installed")


def _all(st, **kw):
    return engine.query(st, "ip or not ip", **kw).read_all()


@needs_editcap
def test_import_pcapng_and_micro_pcap(tmp_path):
    ng = tmp_path / "v.pcapng"
    us = tmp_path / "v_us.pcap"
    subprocess.run(["editcap", "-F", "pcapng", str(CORPUS), str(ng)], check=True)
    subprocess.run(["editcap", "-F", "pcap", str(CORPUS), str(us)], check=True)
    assert pcapio.read_frames(ng).fmt == "pcapng" and pcapio.read_frames(us).fmt == "pcap-us"
    st = Store(tmp_path / "s1")
    importer.import_file(st, ng)
    assert _all(st)[24:] == CORPUS.read_bytes()[24:]  # pcapng (ns resolution) -> the same records
    st2 = Store(tmp_path / "s2")
    importer.import_file(st2, us)
    assert _all(st2, micros=True)[24:] == us.read_bytes()[24:]  # µs in, µs out, byte for byte


def test_import_big_endian_pcap(tmp_path):
    le = CORPUS.read_bytes()
    out = bytearray(struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
    p = 24
    while p < len(le):  # test data only: rewrite each header big-endian
        h = struct.unpack_from("<IIII", le, p)
        out += struct.pack(">IIII", *h) + le[p + 16 : p + 16 + h[2]]
        p += 16 + h[2]
    be = tmp_path / "be.pcap"
    be.write_bytes(bytes(out))
    st = Store(tmp_path / "s")
    importer.import_file(st, be)
    assert _all(st)[24:] == le[24:]


def test_import_refuses_non_ethernet_and_junk(tmp_path):
    raw = tmp_path / "raw.pcap"
    raw.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    with pytest.raises(pcapio.CaptureFormatError, match="not Ethernet"):
        importer.import_file(Store(tmp_path / "s"), raw)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world")
    with pytest.raises(pcapio.CaptureFormatError, match="not a pcap"):
        importer.import_file(Store(tmp_path / "s"), junk)


def test_two_imports_one_store_and_reindex(tmp_path):
    st = Store(tmp_path / "s")
    a = importer.import_file(st, CORPUS, rotate_ns=3 * 10**9)
    b = importer.import_file(st, CORPUS, rotate_ns=3 * 10**9)  # same times: stamps are bumped, nothing lost
    assert len(st.files()) == a.files + b.files
    data = _all(st)
    recs = _split(data)
    assert len(recs) == 2 * a.packets
    assert recs[0::2] == recs[1::2]  # each packet twice, adjacent (equal ts, file order)
    fs = st.files()
    shutil.rmtree(fs[0].idx)  # missing index: scanned, with a warning
    s = engine.query(st, "ip or not ip")
    assert s.read_all() == data and any("no index" in w for w in s.warnings)
    for f in fs[1].idx.iterdir():
        if f.suffix == ".sst":
            f.write_bytes(b"broken")
    assert importer.reindex(st) == len(fs)
    s = engine.query(st, "ip or not ip")
    assert s.read_all() == data and not s.warnings


def test_index_share_on_varied(tmp_path):
    st = Store(tmp_path / "s")
    r = importer.import_file(st, CORPUS)
    assert r.files == 1
    assert r.index_bytes / r.bytes < 0.03  # ~1.2 % measured (sst + DB files)


def _cli(args, **kw):
    import sys

    return subprocess.run([sys.executable, "-m", "stenoxdp"] + args, capture_output=True, **kw)


def test_cli_import_query_reindex(tmp_path):
    d = tmp_path / "st"
    r = _cli(["import", str(CORPUS), "--dir", str(d)])
    assert r.returncode == 0 and b"2192 packets" in r.stdout
    r = _cli(["query", "tcp and port 4433", "--dir", str(d), "-w", "-"])
    want = subprocess.run(["tcpdump", "--time-stamp-precision=nano", "-r", str(CORPUS), "-w", "-",
                           "tcp port 4433"], capture_output=True).stdout
    assert r.returncode == 0 and r.stdout[24:] == want[24:] and len(want) > 1000
    out = tmp_path / "o.pcap"
    r = _cli(["query", "icmp", "--dir", str(d), "-w", str(out), "--micros", "--limit-packets", "3"])
    assert r.returncode == 0 and out.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1" and len(_split(out.read_bytes())) == 3
    r = _cli(["query", "host 1.2.3", "--dir", str(d), "-w", "-"])
    assert r.returncode == 2 and b"position 5" in r.stderr and b"Traceback" not in r.stderr
    r = _cli(["query", "tcp", "--dir", str(tmp_path / "nope"), "-w", "-"])
    assert r.returncode == 2 and b"not a stenoxdp store" in r.stderr
    r = _cli(["reindex", "--dir", str(d)])
    assert r.returncode == 0 and b"reindexed 1" in r.stdout


def test_cli_refuses_terminal(tmp_path):
    import pty
    import os as _os

    d = tmp_path / "st"
    Store(d).init()
    m, s = pty.openpty()
    import sys

    p = subprocess.run([sys.executable, "-m", "stenoxdp", "query", "tcp", "--dir", str(d)], stdout=s,
                       stderr=subprocess.PIPE, timeout=60)
    _os.close(m)
    _os.close(s)
    assert p.returncode == 2 and b"terminal" in p.stderr


def test_file_deleted_during_query(tmp_path):
    st = Store(tmp_path).init()
    rng = np.random.default_rng(9)
    for i in range(3):
        r = rand_recs(3000, seed=20 + i, t0=T0 + i * 100 * 10**9, sizes=(60, 200))
        data = _pcap_bytes(r, rng)
        pcap, _, idx = st.final_paths("e", 0, T0 + i * 100 * 10**9)
        pcap.parent.mkdir(parents=True, exist_ok=True)
        pcap.write_bytes(data)
        I.build_index(r, idx, len(data))
    s = engine.query(st, "ip or not ip")
    it = iter(s)
    next(it)
    got = len(_split(engine.pcap_header() + next(it)))
    st.files()[2].pcap.unlink()  # retention deletes the newest file's pcap mid-answer
    rest = b"".join(it)
    total = got + len(_split(engine.pcap_header() + rest))
    assert total == 6000 and s.packets == 6000
    assert any("deleted during the query" in w for w in s.warnings)


def test_files_stamped_after_the_window_are_not_opened(tmp_path):
    st, files = _make_store(tmp_path, [("e", 0, 300, "indexed"), ("e", 0, 300, "indexed")], seed=5)
    fs = st.files()
    late = fs[1]
    new_stamp = late.stamp + 3600 * 10**9
    pcap, _, idx = st.final_paths("e", 0, new_stamp)
    late.pcap.rename(pcap)
    late.idx.rename(idx)
    for f in idx.iterdir():
        f.write_bytes(b"junk")  # were it opened, a warning would say so
    hi = int(files[0][3]["ts_ns"].max()) + 1
    s = engine.query(st, f"before {qlang._ts_text(hi)}")
    assert len(_split(s.read_all())) == 300 and not s.warnings  # only the first file was read


def test_damaged_values_fall_back_to_scan(tmp_path):
    import rocksdict

    st, files = _make_store(tmp_path, [("e", 0, 400, "indexed"), ("e", 0, 300, "indexed")], seed=8)
    fs = st.files()
    db = rocksdict.Rdict(str(fs[0].idx), rocksdict.Options(raw_mode=True))
    db[K.chunk_key(0)] = b"\0" * 40  # a readable DB with a garbage chunk value
    db.close()
    s = engine.query(st, "ip or not ip")
    assert len(_split(s.read_all())) == 700
    assert any("damaged" in w for w in s.warnings)


def test_rec_files_evaluated_in_slices(store, monkeypatch):
    st, files = store
    monkeypatch.setattr(engine, "REC_SLICE", 97)  # the open and .rec-only files span many slices
    for text in ("tcp", "not host 198.18.0.3", "ip or not ip"):
        assert _split(_run(st, text)[1]) == _expected(files, qlang.parse(text))


def test_rotation_between_listing_and_planning(tmp_path):
    """The writer renames .rec then .pcap (and the indexer deletes the .rec) while
    a query plans: the file is found under its new names, nothing is lost."""
    st, files = _make_store(tmp_path, [("e", 0, 400, "open"), ("e", 0, 300, "indexed")], seed=11)
    stale = st.files()
    op = [f for f in stale if not f.complete][0]
    pcap, rec, idx = st.final_paths("e", 0, op.stamp)
    op.rec.rename(rec)  # rotation: .rec first ...
    st.files = lambda iface=None, include_open=True: stale  # the query listed before the rename
    s = engine.query(st, "ip or not ip")
    assert len(_split(s.read_all())) == 700 and not s.warnings
    op.pcap.rename(pcap)  # ... then the .pcap; then the indexer builds the index and deletes the .rec
    I.build_index(I.read_recs(rec), idx, pcap.stat().st_size)
    rec.unlink()
    s = engine.query(st, "ip or not ip")
    assert len(_split(s.read_all())) == 700 and not s.warnings


def test_indexes_reopened_beyond_keep_open(store, monkeypatch):
    st, files = store
    monkeypatch.setattr(engine, "KEEP_OPEN", 1)
    engine._meta_cache.clear()
    for text in ("udp and port 53", "not ip"):
        assert _split(_run(st, text)[1]) == _expected(files, qlang.parse(text))


def test_pcapng_block_claiming_too_much_is_refused(tmp_path):
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
    epb = struct.pack("<IIIIIII", 6, 48, 0, 0, 0, 9999, 9999) + bytes(16) + struct.pack("<I", 48)
    p = tmp_path / "bad.pcapng"
    p.write_bytes(shb + idb + epb)
    with pytest.raises(pcapio.CaptureFormatError, match="more than it holds"):
        pcapio.read_frames(p)

"""Retention on small real file systems with real capture (`stenoctl run --config`, XDP + AF_XDP on a
lab veth): the free-space floor holds during a burst (crossed by at most one file's size), the newest
data is kept, per-interface limits keep different horizons, and a kill -9 leaves nothing that the
next start does not salvage."""
from __future__ import annotations

import os
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from stenoxdp.lab import HOST_MAC, PEER_MAC, CaptureProc, mac_bytes, run
from stenoxdp.retention import adapt_rotate_bytes

pytestmark = pytest.mark.netns

MiB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=160m", "sxdp-ret", str(mnt)])
    try:
        yield mnt
    finally:
        run(["umount", "-l", str(mnt)], check=False)


def frame(n: int, size: int = 200) -> bytes:
    body = struct.pack(">4sI", b"NEWD", n)
    udp = struct.pack(">HHHH", 40000, 9, 8 + len(body), 0) + body
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, b"\xc6\x12\x00\x01",
                     b"\xc6\x12\x00\x02") + udp
    f = mac_bytes(HOST_MAC) + mac_bytes(PEER_MAC) + b"\x08\x00" + ip
    return f + bytes(max(0, size - len(f)))


def write_config(path: Path, status: Path, ifaces: list[dict]) -> Path:
    lines = [f'status_dir = "{status}"', ""]
    for i in ifaces:
        ret = i.pop("retention", {})
        lines.append("[[iface]]")
        for k, v in i.items():
            lines.append(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower()}")
        lines.append("[iface.retention]")
        for k, v in ret.items():
            lines.append(f"{k} = {v!r}".replace("'", '"'))
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def daemon(cfg: Path, status: Path, iface: str) -> CaptureProc:
    cap = CaptureProc(iface, status.parent / "unused", status)
    cap.cmd = [cap.cmd[0], "run", "--config", str(cfg)]
    return cap


def pcap_payloads(files: list[Path]) -> set[int]:
    seen = set()
    for f in files:
        seen |= _ids_in(f.read_bytes())
    return seen


def _ids_in(data: bytes) -> set[int]:
    """The NEWD tags of the complete records of a pcap file's bytes."""
    seen, off = set(), 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        if caplen == 0 or off + 16 + caplen > len(data):
            break
        pkt = data[off + 16: off + 16 + caplen]
        i = pkt.find(b"NEWD")
        if i >= 0:
            seen.add(struct.unpack_from(">I", pkt, i + 4)[0])
        off += 16 + caplen
    return seen


def test_burst_into_small_fs_floor_holds_newest_kept(lab, tmpfs, tmp_path):
    status = tmp_path / "run"
    status.mkdir()
    store = tmpfs / "store"
    # rotate_bytes left at its 4 GiB default: the daemon picks a size that fits this file system
    cfg = write_config(tmp_path / "c.toml", status, [{
        "name": lab.iface, "dir": str(store), "dedicated": True, "queues": 1, "rotate_seconds": 1,
        "retention": {"min_free_percent": 25}}])
    sv = os.statvfs(tmpfs)
    total = sv.f_blocks * sv.f_frsize
    rotate = adapt_rotate_bytes(total, 25, 1)
    assert rotate < 4 * MiB
    floor = total * 25 // 100
    low = [sv.f_bavail * sv.f_frsize]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            s = os.statvfs(tmpfs)
            low[0] = min(low[0], s.f_bavail * s.f_frsize)
            time.sleep(0.002)

    answers: list[tuple[int, int, str]] = []

    def ask():  # queries keep answering while files are deleted under them
        import subprocess
        import sys

        k = 0
        while not stop.is_set() and k < 20:
            out = tmp_path / f"q{k}.pcap"
            r = subprocess.run([str(Path(sys.executable).parent / "stenoctl"), "query", "udp and port 1024", "--dir",
                                str(store), "-w", str(out)], capture_output=True, text=True, timeout=120)
            data = out.read_bytes() if out.exists() else b""
            off, whole = 24, len(data) >= 24
            while whole and off + 16 <= len(data):
                off += 16 + struct.unpack_from("<I", data, off + 8)[0]
            answers.append((r.returncode, (off - 24) if whole and off == len(data) else -1, r.stderr[-300:]))
            out.unlink(missing_ok=True)
            k += 1

    t = threading.Thread(target=sample, daemon=True)
    asker = threading.Thread(target=ask, daemon=True)
    with daemon(cfg, status, lab.iface) as cap:
        t.start()
        try:
            time.sleep(0.5)
            asker.start()
            # ~280 MB of 1400-byte frames through a 160 MB file system: retention must make room
            r = lab.trafgen(1400, 200_000, rate_pps=60_000)
            assert r.returncode == 0, r.stderr
            lab.send_frames([frame(n) for n in range(200)], pps=2000)
            time.sleep(1.5)
            st = cap.status()
        finally:
            stop.set()
            t.join()
            if asker.is_alive() or asker.ident:
                asker.join()
    assert cap.returncode == 0, cap.stderr
    assert answers and all(rc == 0 and n >= 0 for rc, n, _ in answers), answers
    assert any(n > 0 for _, n, _ in answers), answers
    # the floor held, crossed by at most one file's size; files were no bigger than the adapted size
    assert all(f.stat().st_size <= rotate + 65536 for f in store.glob(f"packets/{lab.iface}/q*/*.pcap"))
    assert low[0] >= floor - rotate, f"free fell to {low[0]} with floor {floor} ({(floor - low[0]) / MiB:.1f} MiB under)"
    files = sorted(store.glob(f"packets/{lab.iface}/q*/*.pcap"))
    # retention deleted old files (the burst alone was bigger than the file system)
    assert files and sum(f.stat().st_size for f in files) < total
    assert int(files[0].name[:19]) > 0
    # the newest data is all there
    assert pcap_payloads(files) == set(range(200))
    # status shows what retention did and why
    ret = st["ifaces"][0].get("retention") or []
    deleted = sum(r.get("files_deleted", 0) for r in ret) if ret else len(st["ifaces"][0].get("retention_actions", []))
    assert deleted > 0, f"no retention actions in status: {st['ifaces'][0].keys()}"
    if ret:
        assert set(ret[0]["deleted_by_reason"]) == {"free"} and ret[0]["floor_unreachable"] == 0


def test_two_ifaces_different_limits_different_horizons(lab_factory, tmpfs, tmp_path):
    a, b = lab_factory(), lab_factory()
    status = tmp_path / "run"
    status.mkdir()
    cfg = write_config(tmp_path / "c.toml", status, [
        {"name": a.iface, "dir": str(tmpfs / "a"), "dedicated": True, "queues": 1, "rotate_seconds": 0.5,
         "retention": {"min_free_percent": 0, "max_files": 2}},
        {"name": b.iface, "dir": str(tmpfs / "b"), "dedicated": True, "queues": 1, "rotate_seconds": 0.5,
         "retention": {"min_free_percent": 0, "max_files": 1000}},
    ])
    with daemon(cfg, status, a.iface) as cap:
        for rnd in range(8):
            a.send_frames([frame(rnd * 10 + i) for i in range(10)], pps=1000)
            b.send_frames([frame(rnd * 10 + i) for i in range(10)], pps=1000)
            time.sleep(0.5)
        time.sleep(1.5)
    assert cap.returncode == 0, cap.stderr
    fa = sorted((tmpfs / "a").glob(f"packets/{a.iface}/q*/*.pcap"))
    fb = sorted((tmpfs / "b").glob(f"packets/{b.iface}/q*/*.pcap"))
    assert 1 <= len(fa) <= 3 and len(fb) >= 5, (len(fa), len(fb))
    assert int(fa[0].name[:19]) > int(fb[0].name[:19])  # a keeps a shorter horizon
    assert pcap_payloads(fb) == set(range(80))  # b lost nothing
    assert 79 in pcap_payloads(fa)  # a kept its newest
    # indexes agree with packet files: no index without its packet file
    for root, files in ((tmpfs / "a", fa), (tmpfs / "b", fb)):
        stamps = {f.name[:19] for f in files}
        for idx in root.glob("index/*/q*/*.idx"):
            assert idx.name[:19] in stamps, idx


def _alloc(p: Path) -> int:
    st = p.stat()
    return st.st_blocks * 512


def test_bytes_and_age_limits_hold(lab_factory, tmpfs, tmp_path):
    a, b = lab_factory(), lab_factory()
    status = tmp_path / "run"
    status.mkdir()
    cfg = write_config(tmp_path / "c.toml", status, [
        {"name": a.iface, "dir": str(tmpfs / "a"), "dedicated": True, "queues": 1, "rotate_seconds": 0.5,
         "retention": {"min_free_percent": 0, "max_bytes": 1 << 20}},
        {"name": b.iface, "dir": str(tmpfs / "b"), "dedicated": True, "queues": 1, "rotate_seconds": 0.5,
         "retention": {"min_free_percent": 0, "max_age_s": 2}},
    ])
    biggest = 0
    with daemon(cfg, status, a.iface) as cap:
        for rnd in range(10):
            a.send_frames([frame(rnd * 200 + i, 1000) for i in range(200)], pps=2000)
            b.send_frames([frame(rnd * 10 + i) for i in range(10)], pps=1000)
            fa = list((tmpfs / "a").glob(f"packets/{a.iface}/q0/*.pcap"))
            biggest = max([biggest] + [_alloc(f) for f in fa])
        time.sleep(2.5)
        now = time.time_ns()
        fa = sorted((tmpfs / "a").glob(f"packets/{a.iface}/q0/*.pcap"))
        used = sum(_alloc(p) for p in (tmpfs / "a").rglob("*") if p.is_file() and not p.name.startswith("."))
        fb = sorted((tmpfs / "b").glob(f"packets/{b.iface}/q0/*.pcap"))
        ages = [(now - f.stat().st_mtime_ns) / 1e9 for f in fb]
    assert cap.returncode == 0, cap.stderr
    # bytes: packets + index of a within the limit (the newest file is kept even when alone over it)
    assert used <= (1 << 20) + biggest, (used, biggest)
    assert 1999 in pcap_payloads(fa)
    # age: every completed file of b but the newest ended less than max_age (+ one retention period) ago
    assert fb and all(age <= 2 + 1.5 for age in ages[:-1]), ages
    assert len(fb) < 10


def test_disk_filled_by_another_process(lab, tmpfs, tmp_path):
    """Another process fills the file system: retention frees our oldest data to get back to the floor;
    when nothing more can be freed it says so in status, and capture keeps running."""
    status = tmp_path / "run"
    status.mkdir()
    store = tmpfs / "store"
    cfg = write_config(tmp_path / "c.toml", status, [{
        "name": lab.iface, "dir": str(store), "dedicated": True, "queues": 1, "rotate_seconds": 1,
        "rotate_bytes": 2 * MiB, "retention": {"min_free_percent": 25}}])
    sv = os.statvfs(tmpfs)
    total = sv.f_blocks * sv.f_frsize
    floor = total * 25 // 100

    def free() -> int:
        s = os.statvfs(tmpfs)
        return s.f_bavail * s.f_frsize

    def fill(name: str, nbytes: int) -> None:
        with open(tmpfs / name, "wb") as fh:
            try:
                fh.write(b"\1" * nbytes)
            except OSError:
                pass

    with daemon(cfg, status, lab.iface) as cap:
        assert lab.trafgen(1400, 40_000, rate_pps=40_000).returncode == 0
        time.sleep(1.5)
        ours_before = sorted(store.glob(f"packets/{lab.iface}/q0/*.pcap"))
        # Push free space under the floor by at most what deleting our files can give back
        # (all but the newest, which is kept): retention may already have trimmed our data
        # during the burst (it reserves for the fill rate), so the deficit is sized from it.
        deletable = sum(p.stat().st_size for p in ours_before[:-1])
        assert deletable >= 6 * MiB, f"the burst left too little to delete ({deletable} bytes)"
        deficit = min(floor // 2, deletable - 3 * MiB)
        fill("foreign1", free() - floor + deficit)
        for _ in range(50):
            if free() >= floor - 2 * MiB:
                break
            time.sleep(0.1)
        assert free() >= floor - 2 * MiB, (free(), floor)
        ours_after = sorted(store.glob(f"packets/{lab.iface}/q0/*.pcap"))
        assert ours_after and ours_after[0] > ours_before[0] and ours_after[-1] >= ours_before[-1]
        # now more than all of our data: nothing left to free but the newest
        fill("foreign2", free())
        time.sleep(1.5)
        st = cap.status()
        ret = (st["ifaces"][0].get("retention") or [{}])[0]
        assert ret.get("floor_unreachable", 0) > 0, ret
        # the other process goes away: capture is still running and records again
        (tmpfs / "foreign1").unlink()
        (tmpfs / "foreign2").unlink()
        time.sleep(1.0)
        lab.send_frames([frame(n) for n in range(100)], pps=2000)
        time.sleep(2.0)
        assert cap.proc.poll() is None
    assert cap.returncode == 0, cap.stderr
    assert pcap_payloads(sorted(store.glob(f"packets/{lab.iface}/q0/*.pcap"))) == set(range(100))


def _check_store(store: Path, iface: str, allow_open_after: int | None = None) -> None:
    """_check_store_once; while a daemon runs, a deletion or a rotation may be between two of its
    steps when we look, so a failure is only one if it is still there a moment later."""
    try:
        _check_store_once(store, iface, allow_open_after)
    except AssertionError:
        if allow_open_after is None:
            raise
        time.sleep(0.5)
        _check_store_once(store, iface, allow_open_after)


def _check_store_once(store: Path, iface: str, allow_open_after: int | None = None) -> None:
    """No orphan, no tombstone, every completed packet file has its records or its index, and hidden
    packet files only for the running daemon's open files."""
    for q in store.glob(f"packets/{iface}/q*"):
        names = set(os.listdir(q))
        iq = store / "index" / iface / q.name
        inames = set(os.listdir(iq)) if iq.is_dir() else set()
        for nm in names:
            assert not nm.endswith(".del"), nm
            if nm.startswith(".") and nm.endswith(".pcap"):
                assert allow_open_after is not None and int(nm[1:20]) >= allow_open_after, f"unsalvaged {nm}"
            if not nm.startswith(".") and nm.endswith(".rec"):
                assert nm[:19] + ".pcap" in names, f"orphan {nm}"
        for nm in inames:
            if nm.endswith(".idx") and not nm.startswith("."):
                assert nm[:19] + ".pcap" in names or (q / (nm[:19] + ".pcap")).exists(), f"orphan {nm}"
        for nm in names:
            if nm.endswith(".pcap") and not nm.startswith("."):
                s = nm[:19]
                if (q / nm).exists():
                    assert s + ".rec" in names or (iq / (s + ".idx")).exists() or (q / (s + ".rec")).exists(), \
                        f"{nm} has neither records nor index"


def _complete_ids(path: Path) -> set[int]:
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    return _ids_in(data)


def query_ids(store: Path, tmp: Path) -> set[int]:
    """The ids a real `stenoctl query` returns from the store (index path, and a scan of unindexed files)."""
    import subprocess
    import sys

    out = tmp / "q.pcap"
    r = subprocess.run([str(Path(sys.executable).parent / "stenoctl"), "query", "udp and port 9", "--dir", str(store),
                        "-w", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return pcap_payloads([out])


@pytest.mark.slow
def test_kill9_at_random_moments_20_rounds(lab, tmpfs, tmp_path):
    """kill -9 of the whole daemon (controller, writers, indexer, retention) at random moments during
    capture, rotation and deletion, 20 rounds: each restart salvages every complete packet of the
    partial files, leaves no orphan, and completed files keep their records or index."""
    import random

    rng = random.Random(20)
    status = tmp_path / "run"
    status.mkdir()
    store = tmpfs / "s"
    cfg = write_config(tmp_path / "c.toml", status, [{
        "name": lab.iface, "dir": str(store), "dedicated": True, "queues": 1, "rotate_seconds": 0.3,
        "flush_interval": 0.05, "retention": {"min_free_percent": 5, "max_files": 6}}])
    q = store / "packets" / lab.iface / "q0"
    must_keep: set[int] = set()
    sent_total = 0
    for rnd in range(20):
        t_start = time.time_ns()
        cap = daemon(cfg, status, lab.iface)
        cap.start()
        try:
            # the restart salvaged the previous round's partial files: their packets are all there
            have = pcap_payloads(sorted(q.glob("*.pcap"))) if q.is_dir() else set()
            assert must_keep <= have, f"round {rnd}: lost {sorted(must_keep - have)[:10]}"
            _check_store(store, lab.iface, allow_open_after=t_start)
            if rnd % 5 == 4:  # and a query returns them
                got = query_ids(store, tmp_path)
                assert must_keep <= got, f"round {rnd}: query misses {sorted(must_keep - got)[:10]}"
            n = rng.randint(100, 800)
            ids = list(range(sent_total, sent_total + n))
            sent_total += n
            th = threading.Thread(target=lambda: lab.send_frames([frame(i) for i in ids], pps=2000), daemon=True)
            th.start()
            time.sleep(rng.uniform(0.05, n / 2000 + 0.3))
        finally:
            os.killpg(cap.proc.pid, signal.SIGKILL)
            cap.proc.wait()
            cap.proc = None
        th.join()
        run(["ip", "link", "set", "dev", lab.iface, "xdp", "off"], check=False)
        # every complete packet in a partial file must survive the next restart
        must_keep = set()
        for p in q.glob(".*.pcap"):
            must_keep |= _complete_ids(p)
    with daemon(cfg, status, lab.iface) as cap:
        time.sleep(0.3)
        have = pcap_payloads(sorted(q.glob("*.pcap")))
        assert must_keep <= have
    assert cap.returncode == 0, cap.stderr
    _check_store(store, lab.iface)
    # indexes agree with packet files: a query returns exactly what the files hold
    assert query_ids(store, tmp_path) == pcap_payloads(sorted(q.glob("*.pcap")))

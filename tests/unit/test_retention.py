"""plan_deletions (pure) for each limit and their combinations, adapt_rotate_bytes, and the executor
(crash-safe pair deletion, idempotence) on real files in a temp dir."""
from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stenoxdp.config import Retention
from stenoxdp.layout import REC_DTYPE
from stenoxdp.retention import (Deletion, FileInfo, FsUsage, RetentionLoop, Usage, adapt_rotate_bytes, apply,
                                delete_pair, plan_deletions, tomb_path)
from stenoxdp.store import Store

S = 1_000_000_000
MB = 1 << 20
NOW = 10_000 * S
OFF = Retention(min_free_percent=0)


def files(n, size=MB, idx=0, queues=1, start=1000):
    """n files, oldest first; file i has stamp start+i s and its last packet 1 s later."""
    out = []
    for i in range(n):
        st_ = (start + i) * S
        out.append(FileInfo(st_, size, idx, st_ + S, queue=i % queues, iface="eth1"))
    return out


def usage(free, total=100 * MB, **kw):
    return Usage(FsUsage(total, free), **kw)


def stamps(plan):
    return [d.stamp for d in plan]


# ---- nothing to do ------------------------------------------------------------
def test_no_limits_no_deletions():
    assert plan_deletions(files(10), usage(1 * MB), OFF, NOW) == []


def test_empty_and_single_file():
    pol = Retention(min_free_percent=50, max_files=1, max_bytes=MB, max_age_s=1)
    assert plan_deletions([], usage(0), pol, NOW) == []
    # the newest completed file is never deleted
    assert plan_deletions(files(1), usage(0), pol, NOW) == []


# ---- free space ---------------------------------------------------------------
def test_free_deletes_exactly_enough_oldest_first():
    fs = files(10, size=MB)
    # 100 MB fs, 10 % floor = 10 MB; 6.5 MB free -> 3.5 MB short -> 4 files, the four oldest
    plan = plan_deletions(fs, usage(6 * MB + MB // 2), Retention(min_free_percent=10), NOW)
    assert stamps(plan) == [f.stamp for f in fs[:4]]
    assert {d.reason for d in plan} == {"free"}


def test_free_at_floor_exactly_is_enough():
    assert plan_deletions(files(10), usage(10 * MB), Retention(min_free_percent=10), NOW) == []
    assert len(plan_deletions(files(10), usage(10 * MB - 1), Retention(min_free_percent=10), NOW)) == 1


def test_free_counts_index_bytes_on_same_fs():
    fs = files(10, size=MB // 2, idx=MB // 2)
    plan = plan_deletions(fs, usage(7 * MB), Retention(min_free_percent=10), NOW)
    assert len(plan) == 3  # each pair frees 1 MB on the shared fs


def test_free_with_separate_index_fs():
    fs = files(10, size=MB, idx=MB // 4)
    u = Usage(FsUsage(100 * MB, 50 * MB), index=FsUsage(10 * MB, MB // 2))  # index fs: 1 MB floor, 0.5 free
    plan = plan_deletions(fs, u, Retention(min_free_percent=10), NOW)
    assert [d.reason for d in plan] == ["index_free", "index_free"]
    # packets fs short; index fs fine: index bytes don't count toward packets free space
    u = Usage(FsUsage(100 * MB, 8 * MB), index=FsUsage(10 * MB, 5 * MB))
    assert len(plan_deletions(fs, u, Retention(min_free_percent=10), NOW)) == 2


def test_free_reserve_for_open_files():
    fs = files(10)
    plan = plan_deletions(fs, usage(10 * MB, reserve=3 * MB), Retention(min_free_percent=10), NOW)
    assert len(plan) == 3
    # no floor, no reserve applied
    assert plan_deletions(fs, usage(0, reserve=3 * MB), OFF, NOW) == []


def test_floor_unreachable_keeps_newest():
    fs = files(5)
    plan = plan_deletions(fs, usage(0), Retention(min_free_percent=50), NOW)
    assert stamps(plan) == [f.stamp for f in fs[:4]]


def test_stenographer_189_never_deletes_more_than_needed():
    # a big store, slightly under the floor: exactly one file goes, not a cascade
    fs = files(1000, size=100 * MB)
    u = usage(100 * 1000 * MB // 10 - 1, total=100 * 1000 * MB + 10 * MB)
    plan = plan_deletions(fs, u, Retention(min_free_percent=10), NOW)
    assert len(plan) == 1 and plan[0].stamp == fs[0].stamp


# ---- bytes, files, age --------------------------------------------------------
def test_max_bytes_counts_packets_index_and_open():
    fs = files(10, size=MB, idx=MB)  # 20 MB
    assert len(plan_deletions(fs, usage(50 * MB), Retention(min_free_percent=0, max_bytes=20 * MB), NOW)) == 0
    plan = plan_deletions(fs, usage(50 * MB, open_bytes=3 * MB), Retention(min_free_percent=0, max_bytes=20 * MB), NOW)
    assert len(plan) == 2 and {d.reason for d in plan} == {"bytes"}


def test_max_files():
    fs = files(30)
    plan = plan_deletions(fs, usage(50 * MB), Retention(min_free_percent=0, max_files=25), NOW)
    assert stamps(plan) == [f.stamp for f in fs[:5]] and {d.reason for d in plan} == {"files"}


def test_max_age_by_last_packet_time():
    fs = files(10)  # last packets at 1001..1010 s
    pol = Retention(min_free_percent=0, max_age_s=NOW / S - 1005)  # cutoff 1005 s
    plan = plan_deletions(fs, usage(50 * MB), pol, NOW)
    assert [d.last_ts for d in plan] == [t * S for t in range(1001, 1005)]
    assert {d.reason for d in plan} == {"age"}


def test_age_judged_per_file_across_queues():
    # q0's old file has a late last packet; q1's later file ended earlier
    fs = [FileInfo(100 * S, MB, 0, 300 * S, 0, "e"), FileInfo(110 * S, MB, 0, 120 * S, 1, "e"),
          FileInfo(400 * S, MB, 0, 401 * S, 0, "e"), FileInfo(410 * S, MB, 0, 411 * S, 1, "e")]
    plan = plan_deletions(fs, usage(50 * MB), Retention(min_free_percent=0, max_age_s=(NOW - 200 * S) / S), NOW)
    assert stamps(plan) == [110 * S]


def test_combination_first_limit_wins_and_all_hold():
    fs = files(20, size=MB, idx=0)
    pol = Retention(min_free_percent=10, max_bytes=15 * MB, max_files=18, max_age_s=NOW / S - 1003.5)
    plan = plan_deletions(fs, usage(9 * MB), pol, NOW)
    # files: 2 (20 -> 18); bytes: 15 MB allowed -> 3 more; free then already met; age: files ending <= 1003
    assert [d.reason for d in plan] == ["files", "files", "bytes", "bytes", "bytes"]
    left = fs[len(plan):]
    assert len(left) <= 18 and sum(f.pcap_bytes for f in left) <= 15 * MB
    assert all(f.last_ts >= NOW - int(pol.max_age_s * S) for f in left)


def test_newest_per_queue_protected():
    fs = files(6, queues=3)  # q0: 0,3  q1: 1,4  q2: 2,5
    plan = plan_deletions(fs, usage(0), Retention(min_free_percent=50), NOW)
    assert stamps(plan) == [fs[0].stamp, fs[1].stamp, fs[2].stamp]


def test_unsorted_and_duplicate_input():
    fs = files(6)
    shuffled = [fs[3], fs[0], fs[5], fs[0], fs[1], fs[2], fs[4]]
    plan = plan_deletions(shuffled, usage(0), Retention(min_free_percent=0, max_files=3), NOW)
    assert stamps(plan) == [f.stamp for f in fs[:3]]
    assert len(set(stamps(plan))) == len(plan)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 5 * MB), min_size=0, max_size=40), free=st.integers(0, 100 * MB),
       pct=st.floats(0, 60), max_files=st.one_of(st.none(), st.integers(1, 40)),
       max_bytes=st.one_of(st.none(), st.integers(MB, 200 * MB)))
def test_property_limits_hold_minimal_and_newest_kept(sizes, free, pct, max_files, max_bytes):
    fs = [FileInfo((1000 + i) * S, sz, sz // 10, (1001 + i) * S, 0, "e") for i, sz in enumerate(sizes)]
    total = 100 * MB
    pol = Retention(min_free_percent=pct, max_files=max_files, max_bytes=max_bytes)
    plan = plan_deletions(fs, usage(free, total), pol, NOW)
    k = len(plan)
    assert stamps(plan) == [f.stamp for f in fs[:k]]  # oldest first, a prefix
    if fs:
        assert k < len(fs)  # newest kept

    def ok(n):
        left = fs[n:]
        fr = free + sum(f.pcap_bytes + f.index_bytes for f in fs[:n])
        return ((max_files is None or len(left) <= max_files)
                and (max_bytes is None or sum(f.pcap_bytes + f.index_bytes for f in left) <= max_bytes)
                and fr >= -(-total * pct // 100) - 1)

    if k < len(fs) - 1 or not fs:
        assert ok(k) or k == max(0, len(fs) - 1)
    if k:
        assert not ok(k - 1)  # one fewer deletion would not do: exactly enough


# ---- rotate size --------------------------------------------------------------
def test_adapt_rotate_bytes():
    assert adapt_rotate_bytes(1 << 40, 10, 4) == 4 << 30  # big disk: the cap
    small = adapt_rotate_bytes(200 * MB, 10, 2)
    assert MB <= small <= 2 * MB + 4096
    assert small * 2 <= 200 * MB * 0.05  # open files within half the floor
    assert adapt_rotate_bytes(10 * MB, 10, 8) == MB  # never below 1 MiB
    assert adapt_rotate_bytes(200 * MB, 1, 1) <= 200 * MB * 0.005 + 4096


# ---- the executor, on real files ---------------------------------------------
def make_file(store: Store, iface: str, q: int, stamp: int, size: int = 1000, indexed: bool = True,
              last_ts: int | None = None):
    d = store.queue_dir(iface, q)
    d.mkdir(parents=True, exist_ok=True)
    pcap, rec, idx = store.final_paths(iface, q, stamp)
    pcap.write_bytes(b"\0" * size)
    if indexed:
        idx.mkdir(parents=True, exist_ok=True)
        (idx / "000001.sst").write_bytes(b"x" * 100)
    else:
        r = np.zeros(2, dtype=REC_DTYPE)
        r["ts_ns"] = [stamp, last_ts or stamp + 1]
        rec.write_bytes(r.tobytes())
    return pcap, rec, idx


def test_delete_pair_is_one_unit_and_idempotent(tmp_path):
    store = Store(tmp_path / "s").init()
    pcap, rec, idx = make_file(store, "eth1", 0, 5 * S)
    assert delete_pair(store, "eth1", 0, 5 * S)
    assert not pcap.exists() and not idx.exists() and not rec.exists()
    assert not tomb_path(store, "eth1", 0, 5 * S).exists()
    assert not delete_pair(store, "eth1", 0, 5 * S)  # already gone: not deleted twice


def test_apply_skips_duplicates_and_missing(tmp_path):
    store = Store(tmp_path / "s").init()
    make_file(store, "eth1", 0, 5 * S)
    d = Deletion("eth1", 0, 5 * S, 1000, 100, 6 * S, "free")
    gone = Deletion("eth1", 0, 6 * S, 1000, 100, 7 * S, "free")
    assert apply(store, [d, d, gone]) == [d]


def test_loop_on_real_files_keeps_newest_and_counts(tmp_path):
    store = Store(tmp_path / "s").init()
    for i in range(6):
        make_file(store, "eth1", i % 2, (100 + i) * S, indexed=i < 3, last_ts=(100 + i) * S + 5)
    # an open file is never touched
    op, _ = store.open_paths("eth1", 0, 200 * S)
    op.write_bytes(b"\0" * 24)
    loop = RetentionLoop(store, "eth1", Retention(min_free_percent=0, max_files=2))
    done = loop.run_once()
    assert [d.stamp for d in done] == [(100 + i) * S for i in range(4)]
    left = sorted(p.name for p in store.queue_dir("eth1", 0).iterdir()) + \
        sorted(p.name for p in store.queue_dir("eth1", 1).iterdir())
    assert f"{104 * S:019d}.pcap" in left and f"{105 * S:019d}.pcap" in left and op.name in left
    st_ = loop.status()
    assert st_["files_deleted"] == 4 and st_["deleted_by_reason"] == {"files": 4} and st_["files"] == 2
    assert st_["oldest_last_ts_ns"] == 104 * S + 5  # read from the .rec
    assert loop.run_once() == []  # a second run deletes nothing more


def test_loop_by_age_uses_file_times(tmp_path):
    store = Store(tmp_path / "s").init()
    now = 1_700_000_000 * S
    for i in range(4):
        p, _, _ = make_file(store, "eth1", 0, now - (400 - i * 100) * S)
        os.utime(p, ns=(now - (300 - i * 100) * S,) * 2)  # last packet time as mtime
    loop = RetentionLoop(store, "eth1", Retention(min_free_percent=0, max_age_s=150), clock=lambda: now)
    done = loop.run_once()
    assert len(done) == 2 and {d.reason for d in done} == {"age"}


def test_loop_thread_runs_and_stops(tmp_path):
    store = Store(tmp_path / "s").init()
    for i in range(5):
        make_file(store, "eth1", 0, (100 + i) * S)
    loop = RetentionLoop(store, "eth1", Retention(min_free_percent=0, max_files=2), interval=0.05).start()
    try:
        import time

        for _ in range(100):
            if loop.stats.files_deleted == 3:
                break
            time.sleep(0.02)
    finally:
        loop.stop()
    assert loop.stats.files_deleted == 3


def test_effective_rotate_bytes(tmp_path):
    from stenoxdp.retention import effective_rotate_bytes, fs_usage

    total = fs_usage(tmp_path).total
    got = effective_rotate_bytes(4 << 30, tmp_path / "not" / "yet", 10, 2)
    assert got == min(4 << 30, adapt_rotate_bytes(total, 10, 2))
    assert effective_rotate_bytes(2 << 20, tmp_path, 10, 1) <= 2 << 20


def test_enforce_keeps_a_loop_and_reports_each_deletion_once(tmp_path):
    from stenoxdp import retention as R

    store = Store(tmp_path / "s").init()
    for i in range(5):
        make_file(store, "eth1", 0, (100 + i) * S)
    pol = Retention(min_free_percent=0, max_files=2)
    try:
        first = R.enforce(store, pol, "eth1")
        assert len(first) == 3
        assert R.enforce(store, pol, "eth1") == []
        assert R.loop_for(store, "eth1").status()["files_deleted"] == 3
    finally:
        R.stop_all()


def test_loop_removes_index_finished_after_its_file_was_deleted(tmp_path):
    store = Store(tmp_path / "s").init()
    make_file(store, "eth1", 0, 100 * S)
    make_file(store, "eth1", 0, 101 * S)
    late = store.final_paths("eth1", 0, 50 * S)[2]  # the indexer renamed it in after the deletion
    late.mkdir(parents=True)
    tmp = late.with_name("." + late.name + ".tmp")  # a build in progress is not touched
    tmp.mkdir()
    loop = RetentionLoop(store, "eth1", OFF)
    loop.run_once()
    assert not late.exists() and tmp.exists() and store.final_paths("eth1", 0, 100 * S)[2].exists()
    assert loop.status()["orphan_indexes_removed"] == 1


KILL_CHILD = r"""
import sys
from stenoxdp.config import Retention
from stenoxdp.retention import RetentionLoop
from stenoxdp.store import Store
loop = RetentionLoop(Store(sys.argv[1]), "eth1", Retention(min_free_percent=0, max_files=1))
print("ready", flush=True)
loop.run_once()
print("done", flush=True)
"""


def test_kill9_during_deletion_20_rounds_then_salvage(tmp_path):
    """A real process deleting, SIGKILLed at random moments: after salvage every pair is whole or
    gone, nothing is orphaned, and what is gone is always the oldest."""
    import random
    import subprocess
    import sys
    import time

    from stenoxdp.salvage import salvage_store

    rng = random.Random(5)
    store = Store(tmp_path / "s").init()
    n = 12
    interrupted = 0
    window = 0.004  # adapted so kills keep landing inside the deletion run on a slow or busy machine
    for rnd in range(20):
        for p in (store.packets_root, store.index_root):
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        store.init()
        for i in range(n):
            pcap, rec, idx = make_file(store, "eth1", 0, (100 + i) * S, indexed=i % 2 == 0)
            if i % 2 == 0:
                for k in range(40):  # make the index removal take a while
                    (idx / f"{k:06d}.sst").write_bytes(b"x")
        child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(store.root)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, window))
        child.kill()
        child.wait()
        salvage_store(store, index_pcap=None)
        q, iq = store.queue_dir("eth1", 0), store.index_queue_dir("eth1", 0)
        names = set(os.listdir(q))
        inames = set(os.listdir(iq))
        assert not [x for x in names if x.startswith(".")], names
        left = sorted(int(x[:19]) for x in names if x.endswith(".pcap"))
        assert left == [(100 + i) * S for i in range(n - len(left), n)]  # the oldest went first
        interrupted += 0 < n - len(left) < n - 1
        window = window * 1.5 if len(left) == n else window / 1.5 if len(left) == 1 else window
        for st_ in left:
            i = st_ // S - 100
            has_rec = f"{st_:019d}.rec" in names
            has_idx = f"{st_:019d}.idx" in inames
            assert (has_idx if i % 2 == 0 else has_rec), (i, names, inames)  # each pair whole
        assert {int(x[:19]) for x in names if x.endswith(".rec")} <= set(left)  # no orphans
        assert {int(x[:19]) for x in inames} <= set(left)
        # and the next run finishes the job without deleting anything twice
        loop = RetentionLoop(store, "eth1", Retention(min_free_percent=0, max_files=1))
        done = loop.run_once()
        assert len(done) == len(left) - 1 and len({d.stamp for d in done}) == len(done)
    assert interrupted >= 1, interrupted  # at least one kill landed mid-deletion
    print("interrupted rounds:", interrupted)


def test_loop_does_not_spin_when_nothing_can_be_deleted(tmp_path):
    """Under the floor with only the newest file left: no run on every tick (bounded CPU)."""
    import time

    store = Store(tmp_path / "s").init()
    make_file(store, "eth1", 0, 100 * S)
    loop = RetentionLoop(store, "eth1", Retention(min_free_percent=99), interval=10, tick=0.005).start()
    try:
        time.sleep(0.5)
    finally:
        loop.stop()
    # 100 ticks: spinning would be ~100 runs. A real disk shared with other writers may move by
    # more than FUTILE_STEP now and then, which rightly triggers another look (23 seen beside a
    # benchmark writing GBs), hence not <= 1.
    assert 1 <= loop.stats.runs <= 30, loop.stats.runs


def test_records_count_on_the_packets_fs_when_the_index_is_elsewhere():
    fs = [FileInfo((100 + i) * S, MB, MB // 4, (101 + i) * S, 0, "e", rec_bytes=MB) for i in range(10)]
    u = Usage(FsUsage(100 * MB, 7 * MB), index=FsUsage(10 * MB, 5 * MB))
    plan = plan_deletions(fs, u, Retention(min_free_percent=10), NOW)
    assert len(plan) == 2 and plan[0].bytes == MB + MB + MB // 4  # each frees 2 MB on the packets fs
    plan = plan_deletions(fs, usage(50 * MB), Retention(min_free_percent=0, max_bytes=20 * MB), NOW)
    assert len(plan) == 2  # 22.5 MB -> 2 files of 2.25 MB

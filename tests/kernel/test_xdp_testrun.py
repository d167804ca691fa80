"""The XDP capture program in the real kernel: every corpus frame through
BPF_PROG_TEST_RUN, the metadata it writes compared with the Python parser;
truncation of an oversize frame; counters; the filter hook; compile and
verifier errors; pinned maps shared by two instances. One netns test checks
the AF_XDP copy-mode hand-off: the metadata arrives at desc.addr - 32.

Test-run facts on this kernel (6.18): data_out starts at data_meta, so the
output is the 32 metadata bytes followed by the (possibly truncated) frame;
frames shorter than 14 bytes are refused by BPF_PROG_TEST_RUN itself (EINVAL).
"""
from __future__ import annotations

import os
import select
import subprocess
import time

import numpy as np
import pytest

from stenoxdp import layout as L
from stenoxdp.indexer.parse import meta_summary, parse_frame, summary
from tests.corpus.frames import BY_NAME, FRAMES

pytestmark = pytest.mark.kernel

RUNNABLE = [(n, f) for n, f in FRAMES if len(f) >= 14]
FILTER_SHORT = """
#define SXDP_FILTER_DEFINED
static __always_inline int sxdp_filter(void *data, void *data_end, __u32 wirelen)
{
    return wirelen < 100;
}
"""


@pytest.fixture(scope="module")
def bpfprog():
    from stenoxdp import bpfprog as b

    return b


@pytest.fixture(scope="module")
def prog(bpfprog):
    p = bpfprog.load()
    p.sync_clock()
    yield p
    p.close()


def test_corpus_meta_matches_python(prog, bpfprog):
    before = prog.counters()
    malformed = 0
    total = 0
    t0 = time.time_ns()
    for name, f in RUNNABLE:
        rc, out = prog.test_run(f)
        assert rc == bpfprog.XDP_PASS, name  # no AF_XDP socket: redirect falls back to PASS
        assert len(out) == L.META_LEN + len(f), name
        meta, frame = bpfprog.split_test_output(out)
        assert frame == f, name
        want = parse_frame(f)
        assert meta_summary(meta) == summary(want), name
        assert (int(meta["caplen"]), int(meta["len"])) == (len(f), len(f)), name
        ts = int(meta["ts_sec"]) * 10**9 + int(meta["ts_nsec"])
        assert abs(ts - t0) < 60 * 10**9, f"{name}: timestamp is not wall-clock time"
        malformed += bool(want["flags"] & L.F_MALFORMED)
        total += len(f)
    after = prog.counters()
    d = {k: after[k] - before[k] for k in after}
    assert d["seen_pkts"] == len(RUNNABLE)
    assert d["seen_bytes"] == total
    assert d["redirect_fail"] == len(RUNNABLE)
    assert d["redirected"] == 0
    assert d["parse_err"] == malformed > 0
    assert d["oversize"] == d["filtered"] == d["meta_fail"] == 0


def test_runt_is_refused_by_test_run(prog):
    from stenoxdp.errors import StenoError

    with pytest.raises(StenoError, match="BPF_PROG_TEST_RUN failed"):
        prog.test_run(BY_NAME["runt_10"])


def test_every_truncation_in_kernel(prog, bpfprog):
    """A few frames cut at every length from 14 bytes: kernel == Python."""
    for name in ("vlan_mpls_pw_vlan_tcp6", "ipv6_chain_tcp", "ipv4_options_tcp"):
        f = BY_NAME[name]
        for n in range(14, len(f) + 1):
            _, out = prog.test_run(f[:n])
            meta, _ = bpfprog.split_test_output(out)
            assert meta_summary(meta) == summary(parse_frame(f[:n])), (name, n)


def test_random_header_soup_in_kernel(prog, bpfprog):
    """2000 seeded random frames built from plausible ethertypes, IP versions
    and next-header values: the kernel's parse == the Python parser's."""
    import random

    rnd = random.Random(20261127)
    ets = [b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x88\x47", b"\x88\x48"]
    for _ in range(2000):
        f = bytearray(rnd.randbytes(12))
        for _ in range(rnd.randrange(1, 5)):
            f += rnd.choice(ets) + rnd.randbytes(2)
        body = bytearray(rnd.randbytes(rnd.randrange(0, 120)))
        if body:
            body[0] = rnd.choice([0x45, 0x46, 0x4F, 0x60, 0x00, 0x41, rnd.randrange(256)])
        if len(body) > 9:
            body[6] = body[9] = rnd.choice([0, 6, 17, 1, 58, 43, 44, 60, 135, 51])
        f += body
        f = bytes(f)
        _, out = prog.test_run(f)
        meta, _ = bpfprog.split_test_output(out)
        assert meta_summary(meta) == summary(parse_frame(f)), f.hex()


def test_clock_offset_is_applied(prog, bpfprog):
    f = BY_NAME["tcp4_60"]
    prog.set_clock_offset(0)
    _, out = prog.test_run(f)
    meta, _ = bpfprog.split_test_output(out)
    mono = int(meta["ts_sec"]) * 10**9 + int(meta["ts_nsec"])
    assert abs(mono - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) < 10 * 10**9
    off = prog.sync_clock()
    assert prog.clock_offset() == off
    _, out = prog.test_run(f)
    meta, _ = bpfprog.split_test_output(out)
    real = int(meta["ts_sec"]) * 10**9 + int(meta["ts_nsec"])
    assert abs(real - time.time_ns()) < 10 * 10**9


def test_oversize_frame_is_truncated(bpfprog):
    f = BY_NAME["udp4_1514"]
    with bpfprog.load(max_caplen=200) as p:
        rc, out = p.test_run(f)
        meta, frame = bpfprog.split_test_output(out)
        assert frame == f[:200]
        assert (int(meta["caplen"]), int(meta["len"])) == (200, 1514)
        assert int(meta["flags"]) == summary(parse_frame(f))["flags"] | L.F_TRUNC
        assert meta_summary(meta)["l4_off"] == 34
        _, out = p.test_run(BY_NAME["tcp4_60"])  # short frames are left alone
        assert len(out) == 32 + 60
        c = p.counters()
        assert (c["oversize"], c["seen_pkts"], c["seen_bytes"]) == (1, 2, 1514 + 60)


def test_filter_hook(bpfprog):
    with bpfprog.load(filter_c=FILTER_SHORT) as p:
        long_f, short_f = BY_NAME["udp4_512"], BY_NAME["tcp4_60"]
        rc, out = p.test_run(long_f)
        assert rc == bpfprog.XDP_PASS and out == long_f  # rejected: no metadata, frame untouched
        rc, out = p.test_run(short_f)
        assert len(out) == 32 + len(short_f)
        c = p.counters()
        assert (c["filtered"], c["seen_pkts"], c["redirect_fail"]) == (1, 2, 1)


def test_render_is_pure_and_shows_the_filter(bpfprog):
    src, cflags = bpfprog.render(max_caplen=1000, filter_c=FILTER_SHORT, pin_dir="/sys/fs/bpf/x")
    assert src.index("SXDP_FILTER_DEFINED") < src.index("int sxdp_capture(")
    assert "-DSXDP_MAX_CAPLEN=1000" in cflags
    assert '-DSXDP_PIN_XSKS="/sys/fs/bpf/x/xsks"' in cflags
    assert bpfprog.render() == bpfprog.render()
    assert bpfprog.max_caplen_for_chunk(2048) == 2048 - 256 - 32
    from stenoxdp.errors import StenoError

    with pytest.raises(StenoError, match="SXDP_FILTER_DEFINED"):
        bpfprog.render(filter_c="static int f(void) { return 0; }")
    with pytest.raises(StenoError, match="max_caplen"):
        bpfprog.render(max_caplen=10)


def test_compile_error_is_short_with_full_log(bpfprog):
    from stenoxdp.errors import BpfCompileError

    bad = FILTER_SHORT.replace("wirelen < 100", "no_such_thing")
    with pytest.raises(BpfCompileError) as ei:
        bpfprog.load(filter_c=bad)
    assert "no_such_thing" in str(ei.value) and "\n" not in str(ei.value)
    assert "error" in ei.value.detail


def test_verifier_error_is_short_with_full_log(bpfprog):
    from stenoxdp.errors import VerifierError

    bad = FILTER_SHORT.replace("wirelen < 100", "((unsigned char *)data)[100] == 1")
    with pytest.raises(VerifierError) as ei:
        bpfprog.load(filter_c=bad)
    assert "outside of the packet" in str(ei.value) or "invalid access" in str(ei.value)
    assert "processed" in ei.value.detail


def test_pinned_maps_are_shared(bpfprog):
    pin = f"/sys/fs/bpf/sxdp-test-{os.getpid()}"
    try:
        with bpfprog.load(pin_dir=pin) as a, bpfprog.load(pin_dir=pin, filter_c=FILTER_SHORT) as b:
            assert sorted(os.listdir(pin)) == ["clock", "xsks"]
            a.set_clock_offset(123456789)
            assert b.clock_offset() == 123456789
            assert bpfprog.obj_id(a.xsks_map_fd) == bpfprog.obj_id(b.xsks_map_fd)
            assert bpfprog.obj_id(a.clock_map_fd) == bpfprog.obj_id(b.clock_map_fd)
            assert a.prog_id != b.prog_id
            a.test_run(BY_NAME["tcp4_60"])
            assert a.counters()["seen_pkts"] == 1 and b.counters()["seen_pkts"] == 0  # counters per instance
    finally:
        bpfprog.remove_pins(pin)
    assert not os.path.exists(pin)


@pytest.mark.netns
def test_af_xdp_copy_mode_meta_before_packet(lab, bpfprog):
    """Real frames over a veth into an AF_XDP socket (copy mode): the metadata
    the program wrote is at desc.addr - 32, and gather() turns it into pcap
    records whose index fields equal the Python parser's."""
    from stenoxdp.native import api
    from stenoxdp.xsk import XskSocket, xskmap_set

    frames = [f for n, f in RUNNABLE if len(f) <= 1514 and not n.startswith("eth_only")]
    ifindex = int(open(f"/sys/class/net/{lab.iface}/ifindex").read())
    with bpfprog.load(max_caplen=bpfprog.max_caplen_for_chunk(2048)) as p:
        p.sync_clock()
        xsk = XskSocket(ifindex, 0, frame_size=2048, umem_frames=256, ring_size=256)
        try:
            xskmap_set(p.xsks_map_fd, 0, xsk.fd)
            p.attach(lab.iface)
            link = subprocess.run(["ip", "-d", "link", "show", lab.iface], capture_output=True, text=True).stdout
            assert f"prog/xdp id {p.prog_id}" in link
            t0 = time.time_ns()
            lab.send_frames(frames, pps=2000)
            deadline = time.monotonic() + 10
            while xsk.rx_available() < len(frames) and time.monotonic() < deadline:
                select.select([xsk.fd], [], [], 0.1)
            n = xsk.rx_available()
            assert n == len(frames), (n, p.counters(), xsk.stats())
            start = int(xsk.rx.consumer[0])
            descs = xsk.rx.ring
            for i in range(n):
                d = descs[(start + i) & xsk.rx.mask]
                addr, ln = int(d["addr"]), int(d["len"])
                assert addr % 2048 == 256  # XDP_PACKET_HEADROOM into the chunk; the meta just before
                meta = np.frombuffer(xsk.umem_np[addr - 32:addr].tobytes(), L.META_DTYPE)[0]
                assert xsk.umem_np[addr:addr + ln].tobytes() == frames[i]
                assert meta_summary(meta) == summary(parse_frame(frames[i])), i
                assert int(meta["caplen"]) == ln == int(meta["len"])
                ts = int(meta["ts_sec"]) * 10**9 + int(meta["ts_nsec"])
                assert t0 - 10**9 < ts < time.time_ns() + 10**9
            out = np.zeros(1 << 20, np.uint8)
            recs = np.zeros(n, L.REC_DTYPE)
            nbytes, ndone, nbad = api.gather(xsk.umem_np, descs, xsk.rx.mask, start, n, out, 24, recs)
            xsk.recycle(start, ndone)
            assert (ndone, nbad) == (n, 0)
            pos = 0
            for i, f in enumerate(frames):
                assert out[pos + 16:pos + 16 + len(f)].tobytes() == f
                d = parse_frame(f)
                assert int(recs[i]["offset"]) == 24 + pos
                assert (int(recs[i]["sport"]), int(recs[i]["dport"])) == (d["sport"], d["dport"])
                assert bytes(recs[i]["src"]).rstrip(b"\0") == d["src"].rstrip(b"\0")
                assert int(recs[i]["ethertype"]) == d["ethertype"]
                pos += 16 + len(f)
            assert nbytes == pos
            c = p.counters()
            assert c["redirected"] == n and c["redirect_fail"] == 0
        finally:
            p.detach(lab.iface)
            xsk.close()

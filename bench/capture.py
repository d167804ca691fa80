"""Capture benchmark: tcpdump -w, Stenographer's stenotype and stenoxdp on the
same lab veth, with the same trafgen traffic, one tool at a time (they cannot
share the port: stenoxdp's XDP redirect takes the frames before any AF_PACKET
tap would see them, and two capturers would share the one capture core).

Per tool, frame size and repeat, every trial starts the tool fresh, sends a
bounded burst from the lab namespace (generator pinned to CPU 0, the tool to
CPU 1), waits until the tool's output stops growing, reads the tool's process-
tree CPU, stops it and counts the packets in its files:

1. saturation: trafgen unthrottled, a bounded count -> captured rate and loss;
   if nothing is lost the cell is generator-bound ("≥ offered (gen)");
2. steady: paced at --steady-pps (200 kpps) for --window s -> CPU s per Mpkt,
   disk bytes per packet;
3. otherwise bisection of the paced rate between the best lossless rate seen
   and the saturation rate, --steps trials of --window s each.

Lossless means zero lost packets (sent - captured == 0). The reported rates are
the rates the generator actually reached (packets sent / its own send time),
never the rate asked for; when the paced generator falls short of the asked
rate the trial is marked "gen" and bisection stops there.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import tools

GEN_CPU, CAP_CPU = 0, 1


@dataclass
class Trial:
    tool: str
    size: int
    kind: str            # sat | steady | bisect | filter
    asked_pps: float | None
    sent: int = 0
    captured: int = 0
    expected: int = 0    # packets the tool should keep (sent, or sent/10 with the filter)
    lost: int = 0
    send_s: float = 0.0
    offered_pps: float = 0.0
    captured_pps: float = 0.0
    iface_rx: int = 0
    cpu_s: float = 0.0       # tool's whole-tree CPU from traffic start to its exit (wait4), incl. exit work
    cpu_window_s: float = 0.0  # the same up to the moment its output stopped growing (before the stop)
    idle_cpu_pct: float | None = None  # steady trials: the tool's CPU with no traffic, % of one core over 1 s
    sys_busy_s: float = 0.0
    disk: dict = field(default_factory=dict)
    tool_stats: dict | None = None  # the tool's own counters before the stop (stenoxdp: stenoctl status)
    gen_short: bool = False  # paced generator reached < 90 % of the asked rate
    rc: int | None = None
    error: str | None = None

    @property
    def lossless(self) -> bool:
        return self.error is None and self.expected > 0 and self.lost <= 0


def _iface_rx(iface: str) -> int:
    r = subprocess.run(["ip", "-s", "-j", "link", "show", iface], capture_output=True, text=True)
    try:
        return int(json.loads(r.stdout)[0]["stats64"]["rx"]["packets"])
    except Exception:
        return 0


def _trafgen_times(out: str) -> tuple[int | None, float | None]:
    """(packets sent, send seconds) from trafgen's own summary."""
    m = re.search(r"(\d+) packets outgoing", out)
    secs = [int(s) + int(u) / 1e6 for s, u in re.findall(r"(\d+) sec, (\d+) usec on CPU", out)]
    return (int(m.group(1)) if m else None), (max(secs) if secs else None)


def _wait_stable(cap: tools.Capturer, quiet: float = 0.6, limit: float = 20.0) -> None:
    """Wait until the tool's output has stopped growing for ``quiet`` seconds."""
    t_end = time.monotonic() + limit
    last, t_last = -1, time.monotonic()
    while time.monotonic() < t_end:
        b = cap.output_bytes()
        now = time.monotonic()
        if b != last:
            last, t_last = b, now
        elif now - t_last >= quiet:
            return
        time.sleep(0.1)


def run_trial(lab, cap: tools.Capturer, work: Path, size: int, kind: str, count: int,
              rate: float | None, filter_expr: str | None = None, keep_ratio: float = 1.0,
              gen_timeout: float = 120) -> Trial:
    t = Trial(cap.name, size, kind, rate)
    out = work / f"{cap.name}-{size}-{kind}-{time.monotonic_ns()}"
    try:
        cap.start(lab, out, size, filter_expr)
        if kind == "steady":  # what the tool costs with nothing to capture
            c_idle, t_idle = cap.cpu_seconds(), time.monotonic()
            time.sleep(1.0)
            t.idle_cpu_pct = 100.0 * (cap.cpu_seconds() - c_idle) / (time.monotonic() - t_idle)
        cpu0, busy0, rx0 = cap.cpu_seconds(), tools.system_busy(), _iface_rx(lab.iface)
        t0 = time.monotonic()
        r = lab.trafgen(size, count, int(rate) if rate else None, cpu=GEN_CPU, flows=10, timeout=gen_timeout)
        wall = time.monotonic() - t0
        sent, secs = _trafgen_times(r.stdout + r.stderr)
        t.sent = sent if sent is not None else count
        t.send_s = secs or wall
        _wait_stable(cap, quiet=1.2 if cap.name == "stenographer" else 0.6)
        t.cpu_window_s = cap.cpu_seconds() - cpu0
        t.sys_busy_s = tools.system_busy() - busy0
        t.iface_rx = _iface_rx(lab.iface) - rx0
        t.tool_stats = cap.live_stats()
        t.rc = cap.stop(lab)
        t.cpu_s = (cap.exit_cpu - cpu0) if cap.exit_cpu is not None else t.cpu_window_s
        t.captured = cap.count(size)
        t.disk = cap.disk_split()
        t.expected = round(t.sent * keep_ratio)
        t.lost = t.expected - t.captured
        t.offered_pps = t.sent / t.send_s if t.send_s else 0.0
        t.captured_pps = t.captured / t.send_s if t.send_s else 0.0
        if rate and t.offered_pps < 0.9 * rate:
            t.gen_short = True
    except Exception as e:
        t.error = f"{type(e).__name__}: {e}"
        tail = cap.log_text()[-300:] if cap.log else ""
        if tail:
            t.error += f" | log: {tail}"
    finally:
        cap.kill()
        shutil.rmtree(out, ignore_errors=True)
        for extra in (out.parent / f"{out.name}.log", out.parent / f"{out.name}.status"):
            if extra.is_dir():
                shutil.rmtree(extra, ignore_errors=True)
            elif extra.exists():
                extra.unlink()
    return t


@dataclass
class Plan:
    sizes: tuple[int, ...] = (64, 512, 1500)
    repeats: int = 3
    window: float = 3.0          # seconds per paced trial
    steps: int = 3               # bisection steps after the saturation and steady trials
    steady_pps: int = 200_000
    sat_seconds: float = 2.0     # the unthrottled burst is sized to about this long at the expected rate
    gen_timeout: float = 60.0


SAT_GUESS = {64: 1_000_000, 512: 800_000, 1500: 600_000}  # pps the unthrottled generator roughly reaches


def sat_count(size: int, plan: Plan) -> int:
    return int(SAT_GUESS.get(size, 600_000) * plan.sat_seconds)


def measure_cell(lab, cap: tools.Capturer, work: Path, size: int, plan: Plan, log,
                 filter_expr: str | None = None, keep_ratio: float = 1.0, deadline: float | None = None) -> list[Trial]:
    """One repeat of one (tool, size) cell: saturation, steady, bisection."""
    trials: list[Trial] = []

    def go(kind, count, rate):
        tr = run_trial(lab, cap, work, size, kind, count, rate, filter_expr, keep_ratio, plan.gen_timeout)
        trials.append(tr)
        log(f"  {cap.name:12s} {size:5d}B {kind:6s} asked {fmt_pps(rate):>7s} offered {fmt_pps(tr.offered_pps):>7s} "
            f"captured {tr.captured:>8d}/{tr.expected:<8d} lost {tr.lost:<7d} cpu {tr.cpu_s:5.2f}s"
            + (f"  ERROR {tr.error}" if tr.error else "") + (" (gen short)" if tr.gen_short else "")
            + (f"  [{_why_lost(tr)}]" if tr.lost > 0 else ""))
        return tr

    sat = go("sat", sat_count(size, plan), None)
    if sat.error:
        return trials
    steady = go("steady", int(plan.steady_pps * plan.window), plan.steady_pps)
    if sat.lossless:
        return trials  # generator-bound: nothing to bisect
    lo = steady.offered_pps if steady.lossless else 0.0
    hi = sat.offered_pps
    for _ in range(plan.steps):
        if hi - lo < max(10_000, 0.03 * hi):
            break
        if deadline is not None and time.monotonic() > deadline:
            log(f"  {cap.name} {size} B: bisection cut short by the time budget")
            break
        mid = (lo + hi) / 2 if lo > 0 else hi / 2
        tr = go("bisect", max(1000, int(mid * plan.window)), mid)
        if tr.error:
            break
        if tr.lossless:
            lo = max(lo, tr.offered_pps)
            if tr.gen_short:
                break  # the paced generator cannot go higher
        else:
            hi = min(mid, tr.offered_pps) if tr.offered_pps else mid
    return trials


def _why_lost(t: Trial) -> str:
    """Where the packets went, from the tool's own counters (stenoxdp) and the iface."""
    parts = [f"iface rx {t.iface_rx}"]
    st = t.tool_stats or {}
    x = st.get("xdp") or {}
    if x:
        parts.append(f"xdp seen {x.get('seen_pkts')} redirected {x.get('redirected')} "
                     f"redirect_fail {x.get('redirect_fail')}")
    for i, q in enumerate(st.get("queues") or []):
        xs, c = q.get("xsk") or {}, q.get("counters") or {}
        parts.append(f"q{i} written {c.get('packets')} xsk rx_dropped {xs.get('rx_dropped')} "
                     f"ring_full {xs.get('rx_ring_full')} fill_empty {xs.get('rx_fill_ring_empty_descs')}")
    return "; ".join(parts)


def fmt_pps(x: float | None) -> str:
    if not x:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def summarize(trials: list[Trial], plan: Plan) -> dict:
    """Medians over repeats for one (tool, size)."""
    by_rep: dict[int, list[Trial]] = {}
    rep = -1
    for t in trials:
        if t.kind == "sat":
            rep += 1
        by_rep.setdefault(rep, []).append(t)
    lossless, gen_bound, sat_cap, sat_off, sat_loss, cpu, disk, disk_pk, errors = [], [], [], [], [], [], [], [], []
    idle, steady_rate = [], []
    paced_gen = []
    for ts in by_rep.values():
        sat = next((t for t in ts if t.kind == "sat"), None)
        if sat and not sat.error:
            sat_cap.append(sat.captured_pps)
            sat_off.append(sat.offered_pps)
            sat_loss.append(100.0 * max(0, sat.lost) / sat.expected if sat.expected else 0.0)
        errors += [t.error for t in ts if t.error]
        if all(t.error for t in ts):
            continue  # the tool did not run: no figures, only its errors
        ok = [t for t in ts if t.lossless]
        best = max(ok, key=lambda t: t.offered_pps, default=None)
        lossless.append(best.offered_pps if best else 0.0)
        gen_bound.append(bool(best and best.kind == "sat"))
        paced_gen.append(bool(best and best.gen_short))
        st = next((t for t in ts if t.kind == "steady" and not t.error and t.captured), None)
        if st:
            cpu.append(st.cpu_s / st.captured * 1e6)
            steady_rate.append(st.offered_pps)
            if st.idle_cpu_pct is not None:
                idle.append(st.idle_cpu_pct)
            disk.append(st.disk.get("bytes", 0) / st.captured)
            if "packet_bytes" in st.disk:
                disk_pk.append(st.disk["packet_bytes"] / st.captured)
    med = lambda v: statistics.median(v) if v else None  # noqa: E731
    return {
        "lossless_pps": med(lossless),
        "lossless_gen_bound": (sum(gen_bound) * 2 > len(gen_bound)) if gen_bound else False,
        "lossless_paced_gen_limit": (sum(paced_gen) * 2 > len(paced_gen)) if paced_gen else False,
        "sat_captured_pps": med(sat_cap),
        "sat_offered_pps": med(sat_off),
        "sat_loss_pct": med(sat_loss),
        "cpu_s_per_mpkt": med(cpu),
        "disk_bytes_per_pkt": med(disk),
        "disk_packet_bytes_per_pkt": med(disk_pk),
        "idle_cpu_pct": med(idle),
        "steady_offered_pps": med(steady_rate),
        "repeats": len(by_rep),
        "errors": errors[:5],
    }


def _repeats_fit(r: int, t0: float, deadline: float | None, log, what: str) -> bool:
    """Before repeat r (0-based): does one more repeat, at the pace so far, end before the deadline?"""
    if deadline is None or r == 0:
        return True
    per = (time.monotonic() - t0) / r
    if time.monotonic() + per <= deadline:
        return True
    log(f"{what}: stopping after {r} repeat(s): another would pass the time budget (--max-minutes)")
    return False


def run(lab_factory, tool_names: list[str], plan: Plan, work: Path, log, deadline: float | None = None) -> dict:
    """The whole capture benchmark; returns a JSON-able dict."""
    result = {"plan": asdict(plan), "tools": {}, "skipped": {}, "trials": []}
    caps = []
    for n in tool_names:
        cap = tools.TOOLS[n](cpu=CAP_CPU)
        why = cap.available()
        if why:
            result["skipped"][n] = why
            log(f"capture: skipping {n}: {why}")
        else:
            caps.append(cap)
    allt: list[Trial] = []
    t0 = time.monotonic()
    with lab_factory() as lab:
        for r in range(plan.repeats):
            if not _repeats_fit(r, t0, deadline, log, "capture"):
                break
            for size in plan.sizes:
                for cap in caps:   # interleaved, so slow drifts in the machine hit every tool alike
                    log(f"capture: repeat {r + 1}/{plan.repeats} {cap.name} {size} B")
                    try:
                        allt += measure_cell(lab, cap, work, size, plan, log, deadline=deadline)
                    except Exception:
                        log(traceback.format_exc())
                    finally:
                        cap.kill()
    for cap in caps:
        result["tools"][cap.name] = {"label": cap.label, "sizes": {}}
        for size in plan.sizes:
            ts = [t for t in allt if t.tool == cap.name and t.size == size]
            result["tools"][cap.name]["sizes"][str(size)] = summarize(ts, plan)
    result["trials"] = [asdict(t) for t in allt]
    return result


def run_filter(lab_factory, tool_names: list[str], plan: Plan, work: Path, log,
               expr: str = "udp and src port 1024", deadline: float | None = None) -> dict:
    """Issue 6: a filter that keeps 10 % of the traffic (trafgen cycles the UDP
    source port over 1024..1033, so `src port 1024` is exactly every tenth
    frame). Lossless rate (bisected as above, paced) and CPU per million
    offered packets at the steady rate; against tcpdump (and stenotype with its
    compiled --filter) with the same expression on the same traffic."""
    result = {"expr": expr, "keep_ratio": 0.1, "tools": {}, "skipped": {}, "trials": []}
    caps = []
    for n in tool_names:
        cap = tools.TOOLS[n](cpu=CAP_CPU)
        why = cap.available()
        if why:
            result["skipped"][n] = why
            log(f"filter: skipping {n}: {why}")
        else:
            caps.append(cap)
    allt: list[Trial] = []
    t0 = time.monotonic()
    with lab_factory() as lab:
        for r in range(plan.repeats):
            if not _repeats_fit(r, t0, deadline, log, "filter"):
                break
            for size in plan.sizes:
                for cap in caps:
                    log(f"filter: repeat {r + 1}/{plan.repeats} {cap.name} {size} B")
                    try:
                        allt += measure_cell(lab, cap, work, size, plan, log, filter_expr=expr, keep_ratio=0.1,
                                             deadline=deadline)
                    except Exception:
                        log(traceback.format_exc())
                    finally:
                        cap.kill()
    for cap in caps:
        result["tools"][cap.name] = {"label": cap.label, "sizes": {}}
        for size in plan.sizes:
            ts = [t for t in allt if t.tool == cap.name and t.size == size]
            s = summarize(ts, plan)
            # CPU per million *offered* packets (the tool sees all, keeps 10 %)
            cpu = [t.cpu_s / t.sent * 1e6 for t in ts if t.kind == "steady" and not t.error and t.sent]
            s["cpu_s_per_mpkt_offered"] = statistics.median(cpu) if cpu else None
            s["cpu_s_per_mpkt"] = None
            result["tools"][cap.name]["sizes"][str(size)] = s
    result["trials"] = [asdict(t) for t in allt]
    return result

"""`make bench` -> python -m bench.run [--quick] [--only capture,filter,query,server] ...

Benchmarks measure and write results; they assert nothing about speed.
Results: bench/results/capture-<stamp>.{md,json} (capture + filter),
query-<stamp>.json, server-<stamp>.json and bench/results/LATEST.md.
Needs root (namespaces, veth, capture). Every lab, process and scratch
directory it makes is removed on every exit path.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import capture as capbench
from . import report

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("capture", "filter", "query", "server")
OPTIONAL = ("stenoquery",)  # not in the default run: --only stenoquery (bench/query_steno.py, ~30 s)


def _env() -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    model = ""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except Exception:
        pass
    return {
        "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
        "commit": out(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"]),
        "tcpdump": out(["tcpdump", "--version"]).splitlines()[0] if shutil.which("tcpdump") else None,
        "trafgen": (out(["trafgen", "-v"]).splitlines() or [""])[0] if shutil.which("trafgen") else None,
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    }


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repeat, 2 bisection steps, 2 s windows, small query stores (≤ 5 min)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--tools", default="stenoxdp,stenographer,tcpdump", help="capture tools to compare")
    ap.add_argument("--sizes", default="64,512,1500", help="frame sizes (bytes, without FCS)")
    ap.add_argument("--repeats", type=int, help="repeats per cell (default 3; quick 1)")
    ap.add_argument("--window", type=float, help="seconds per paced trial (default 3; quick 2)")
    ap.add_argument("--steps", type=int, help="bisection steps (default 3; quick 2; the filter section uses one fewer)")
    ap.add_argument("--steady-pps", type=int, default=200_000, help="rate of the CPU-per-packet trial")
    ap.add_argument("--filter-sizes", default="64", help="frame sizes for the filter benchmark")
    ap.add_argument("--filter-repeats", type=int, help="repeats of the filter section (default 2; quick 1)")
    ap.add_argument("--max-minutes", type=float, help="time budget (default 25; quick 5): capture and filter stop "
                    "adding repeats that would not fit; later sections are skipped once it is spent")
    ap.add_argument("--filter-expr", default="udp and src port 1024", help="keeps 1 frame in 10 of the lab traffic")
    ap.add_argument("--query-sizes", default=None, help="store sizes in packets (default 1000000,3000000; quick 200000)")
    ap.add_argument("--server-mb", type=float, default=None, help="size of the server benchmark's answer (default 256; quick 64)")
    ap.add_argument("--load-clients", type=int, default=10, help="server section: HTTPS clients pulling answers "
                    "during a stenoxdp capture at --load-pps (0: skip that part)")
    ap.add_argument("--load-pps", type=int, default=100_000, help="capture rate while the clients pull (512-byte frames)")
    ap.add_argument("--work", default=None, help="scratch directory (default /var/tmp/stenoxdp-bench-PID, same disk for every tool)")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results files")
    a = ap.parse_args(argv)
    q = a.quick
    a.repeats = a.repeats or (1 if q else 3)
    a.window = a.window or (2.0 if q else 3.0)
    a.steps = a.steps if a.steps is not None else (2 if q else 3)
    a.filter_repeats = a.filter_repeats or (1 if q else 2)
    a.max_minutes = a.max_minutes or (5.0 if q else 25.0)
    a.query_sizes = [int(x) for x in (a.query_sizes or ("200000" if q else "1000000,3000000")).split(",")]
    a.server_mb = a.server_mb or (64 if q else 256)
    a.only = [s for s in a.only.split(",") if s]
    from .tools import TOOLS
    badt = [t for t in a.tools.split(",") if t and t not in TOOLS]
    if badt:
        ap.error(f"--tools: unknown tool(s) {badt}; choose from {', '.join(TOOLS)}")
    bad = [s for s in a.only if s not in SECTIONS + OPTIONAL]
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; choose from {', '.join(SECTIONS + OPTIONAL)}")
    return a


def main(argv=None) -> int:
    a = parse(argv if argv is not None else sys.argv[1:])
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, veth pairs, capture): run `sudo make bench`", file=sys.stderr)
        return 2
    for tool in ("trafgen", "taskset", "ip"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing: run `make setup`", file=sys.stderr)
            return 2

    def _term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)

    from stenoxdp.lab import Lab

    work = Path(a.work or f"/var/tmp/stenoxdp-bench-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    t_start = time.monotonic()
    logs: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.monotonic() - t_start:7.1f}s] {msg}"
        print(line, flush=True)
        logs.append(line)

    plan = capbench.Plan(sizes=tuple(int(x) for x in a.sizes.split(",")), repeats=a.repeats, window=a.window,
                         steps=a.steps, steady_pps=a.steady_pps, sat_seconds=1.0 if a.quick else 2.0)
    tool_names = [t for t in a.tools.split(",") if t]
    results: dict = {"stamp": stamp, "quick": a.quick, "env": _env(), "args": vars(a).copy()}
    rc = 0
    # the budget, split: capture gets what the later sections do not need (their shares are rough
    # measurements of this VM: filter ~15 %, query ~20 %, server ~10 % of a full run)
    end = t_start + a.max_minutes * 60
    later = {"filter": 0.15, "query": 0.20, "server": 0.10}

    def deadline_for(section: str) -> float:
        rest = sum(v for k, v in later.items() if k in a.only and SECTIONS.index(k) > SECTIONS.index(section))
        return end - rest * a.max_minutes * 60

    def spent(section: str) -> bool:
        if time.monotonic() < end:
            return False
        results[section] = {"skipped": "time budget spent (--max-minutes)", "tools": {}}
        log(f"{section}: skipped: time budget spent")
        return True

    try:
        if "capture" in a.only:
            t0 = time.monotonic()
            results["capture"] = capbench.run(lambda: Lab(queues=1), tool_names, plan, work, log,
                                              deadline=deadline_for("capture"))
            results["capture"]["seconds"] = time.monotonic() - t0
        if "filter" in a.only and not spent("filter"):
            t0 = time.monotonic()
            fplan = capbench.Plan(**{**plan.__dict__, "sizes": tuple(int(x) for x in a.filter_sizes.split(",")),
                                     "steps": max(1, plan.steps - 1), "repeats": a.filter_repeats})
            results["filter"] = capbench.run_filter(lambda: Lab(queues=1), tool_names, fplan, work, log, a.filter_expr,
                                                    deadline=deadline_for("filter"))
            results["filter"]["seconds"] = time.monotonic() - t0
        if "query" in a.only and not spent("query"):
            from . import query as qbench
            t0 = time.monotonic()
            results["query"] = qbench.run(a.query_sizes, work, log, repeats=1 if a.quick else 3)
            results["query"]["seconds"] = time.monotonic() - t0
        if "stenoquery" in a.only and not spent("stenoquery"):
            from . import query_steno
            t0 = time.monotonic()
            results["stenoquery"] = query_steno.run(work / "stenoquery", log, repeats=1 if a.quick else 3)
            results["stenoquery"]["seconds"] = time.monotonic() - t0
        if "server" in a.only and not spent("server"):
            from . import server as sbench
            t0 = time.monotonic()
            results["server"] = sbench.run(a.server_mb, work, log, repeats=1 if a.quick else 3,
                                           load_clients=a.load_clients, load_pps=a.load_pps,
                                           load_seconds=2.0 if a.quick else 4.0, load_repeats=1 if a.quick else 2)
            results["server"]["seconds"] = time.monotonic() - t0
    except KeyboardInterrupt:
        log("interrupted: cleaning up; partial results follow")
        rc = 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.monotonic() - t_start
    md = render(results)
    print("\n".join(md))
    if not a.no_write:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        base = f"capture-{stamp}" + ("-quick" if a.quick else "")
        (out / f"{base}.json").write_text(json.dumps(results, indent=1, default=str))
        (out / f"{base}.md").write_text("\n".join(md) + "\n\n<details><summary>log</summary>\n\n```\n"
                                        + "\n".join(logs) + "\n```\n</details>\n")
        (out / "LATEST.md").write_text("\n".join(md) + f"\n\nFull data: `{base}.json`, per-trial log: `{base}.md`.\n")
        print(f"\nbench: wrote {out / base}.md, .json and LATEST.md ({results['seconds']:.0f} s)")
    return rc


def _repeats_done(res: dict, sec: str) -> int:
    cells = [s.get("repeats", 0) for t in res.get(sec, {}).get("tools", {}).values() for s in t["sizes"].values()]
    return max(cells, default=0)


def render(res: dict) -> list[str]:
    env = res["env"]
    out = [f"# stenoxdp benchmarks — {res['stamp']} UTC" + (" (quick: one repeat, noisy)" if res["quick"] else ""),
           "",
           f"Machine: {env['cpus']} CPUs ({env['cpu_model']}), Linux {env['kernel']}, commit {env['commit']}, "
           f"load average at start {' '.join(env['loadavg_at_start'])}. Whole run: {res['seconds']:.0f} s.",
           "",
           "Method: lab veth (`Lab(queues=1)`), UDP/IPv4 frames from trafgen in the lab namespace pinned to CPU 0, "
           "the capture tool pinned to CPU 1; one tool at a time on the same traffic; each trial starts the tool fresh. "
           "Lossless = the highest offered rate (packets sent / the generator's own send time) with zero packets lost "
           "(sent − packets in the tool's own files), from an unthrottled burst and a bisection of the paced rate. "
           "\"(gen)\": nothing lost even unthrottled — the generator, not the tool, is the limit; "
           "\"(paced gen)\": the paced generator could not reach a higher asked rate. "
           "CPU = user+system seconds of the tool's process tree (/proc, children included) per million captured packets "
           "at the steady rate; the kernel's half of capture runs on the sender's CPU on veth and is not in it. "
           "Disk = bytes of everything the tool wrote (Stenographer and stenoxdp: packets + index) per packet. "
           + (f"Medians of {_repeats_done(res, 'capture')} repeat(s) (capture) and {_repeats_done(res, 'filter')} (filter); "
            "the per-trial log is in the results .md, every trial in the .json." if "capture" in res or "filter" in res
            else ""),
           ""]
    for sec in SECTIONS:
        if res.get(sec, {}).get("skipped") and sec in ("capture", "filter"):
            out += [f"### {sec}: not measured ({res[sec]['skipped']})", ""]
    if "capture" in res and "plan" in res["capture"]:
        out += report.capture_table(res["capture"], "Capture (no filter)")
        out += ["", "#### stenoxdp against the others", ""] + report.ratios(res["capture"]) + [""]
        out.append(f"Capture section: {res['capture'].get('seconds', 0):.0f} s.")
        out.append("")
    if "filter" in res and "expr" in res["filter"]:
        out += report.capture_table(res["filter"], f"Capture with filter `{res['filter']['expr']}` (keeps 10 %; \"captured\" counts the kept packets)",
                                    cpu_key="cpu_s_per_mpkt_offered", cpu_title="CPU s / M offered pkts @ steady")
        out.append(f"\nFilter section: {res['filter'].get('seconds', 0):.0f} s.\n")
    if "query" in res:
        out += report.query_table(res["query"]) + [f"\nQuery section: {res['query'].get('seconds', 0):.0f} s.\n"]
    if "stenoquery" in res:
        from . import query_steno
        out += query_steno.render(res["stenoquery"]) + [f"Stenoquery section: {res['stenoquery'].get('seconds', 0):.0f} s.", ""]
    if "server" in res:
        out += report.server_table(res["server"]) + [f"\nServer section: {res['server'].get('seconds', 0):.0f} s.\n"]
    return out


if __name__ == "__main__":
    sys.exit(main())

"""Markdown rendering of benchmark results (capture, filter, query, server)."""
from __future__ import annotations

from .capture import fmt_pps

ORDER = ("stenoxdp", "stenographer", "tcpdump")


def _lossless(s: dict) -> str:
    v = s.get("lossless_pps")
    if v is None:
        return "–"
    if v == 0:
        return "0 (lost even at the lowest rate)"
    txt = fmt_pps(v)
    if s.get("lossless_gen_bound"):
        return f"≥{txt} (gen)"
    if s.get("lossless_paced_gen_limit"):
        return f"≥{txt} (paced gen)"
    return txt


def _num(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def capture_table(res: dict, title: str = "Capture", cpu_key: str = "cpu_s_per_mpkt",
                  cpu_title: str = "CPU s / Mpkt @ steady") -> list[str]:
    sizes = res["plan"]["sizes"] if "plan" in res else None
    out = [f"### {title}", "",
           f"| tool | frame | lossless pps | saturation: captured (offered) | loss % at saturation | {cpu_title} (rate reached) | idle CPU % | disk B/pkt |",
           "|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        t = res["tools"].get(name)
        if not t:
            continue
        for size, s in t["sizes"].items():
            if sizes and int(size) not in sizes:
                continue
            disk = _num(s.get("disk_bytes_per_pkt"), "{:.0f}")
            if s.get("disk_packet_bytes_per_pkt"):
                disk += f" ({s['disk_packet_bytes_per_pkt']:.0f} pkt files)"
            out.append(f"| {t['label']} | {size} B | {_lossless(s)} | {fmt_pps(s.get('sat_captured_pps'))} "
                       f"({fmt_pps(s.get('sat_offered_pps'))}) | {_num(s.get('sat_loss_pct'), '{:.0f}')} | "
                       f"{_num(s.get(cpu_key))} ({fmt_pps(s.get('steady_offered_pps'))}) | "
                       f"{_num(s.get('idle_cpu_pct'), '{:.0f}')} | {disk} |")
    for n, why in res.get("skipped", {}).items():
        out.append(f"\n*{n} not measured: {why}*")
    errs = [(n, sz, e) for n, t in res["tools"].items() for sz, s in t["sizes"].items() for e in s.get("errors", [])]
    if errs:
        out.append("\nErrors during trials (first few):")
        out += [f"- {n} {sz} B: {e[:300]}" for n, sz, e in errs[:8]]
    return out


def ratios(res: dict) -> list[str]:
    """stenoxdp against tcpdump and Stenographer, per size."""
    t = res["tools"]
    if "stenoxdp" not in t:
        return ["stenoxdp was not measured in this run, so no ratios."]
    out = ["| frame | lossless pps: ×tcpdump / ×Stenographer | CPU per Mpkt: ×tcpdump / ×Stenographer |", "|---|---|---|"]
    for size, s in t["stenoxdp"]["sizes"].items():
        cells = []
        for key in ("lossless_pps", "cpu_s_per_mpkt"):
            parts = []
            for other in ("tcpdump", "stenographer"):
                o = t.get(other, {}).get("sizes", {}).get(size, {})
                a, b = s.get(key), o.get(key)
                mark = ""
                if key == "lossless_pps" and any(x.get("lossless_gen_bound") or x.get("lossless_paced_gen_limit")
                                                 for x in (s, o)):
                    mark = "*"
                parts.append(f"{a / b:.2f}{mark}" if a and b else "–")
            cells.append(" / ".join(parts))
        out.append(f"| {size} B | {cells[0]} | {cells[1]} |")
    out += ["", "Issue 2's targets (lossless rate ≥ the better of tcpdump and Stenographer — where both are "
            "generator-bound, reach the generator too; CPU per Mpkt ≤ Stenographer's):", "",
            "| frame | lossless target | CPU target |", "|---|---|---|"]
    for size, s in t["stenoxdp"]["sizes"].items():
        others = [t.get(o, {}).get("sizes", {}).get(size, {}) for o in ("tcpdump", "stenographer")]
        best = max((o.get("lossless_pps") or 0 for o in others), default=0)
        mine = s.get("lossless_pps") or 0
        gen_all = others and all(o.get("lossless_gen_bound") for o in others if o)
        if not best:
            lt = "–"
        elif mine >= best or (gen_all and s.get("lossless_gen_bound")):
            lt = "met" + (" (all generator-bound)" if gen_all and s.get("lossless_gen_bound") else "")
        else:
            lt = f"not met: {fmt_pps(mine)} vs {fmt_pps(best)} ({100 * (1 - mine / best):.0f} % short)"
        sc = t.get("stenographer", {}).get("sizes", {}).get(size, {}).get("cpu_s_per_mpkt")
        mc = s.get("cpu_s_per_mpkt")
        if not (sc and mc):
            ct = "–"
        elif mc <= sc:
            ct = f"met: {mc:.2f} ≤ {sc:.2f}"
        else:
            ct = f"not met: {mc:.2f} vs {sc:.2f} ({mc / sc:.1f}×)"
        out.append(f"| {size} B | {lt} | {ct} |")
    out.append("")
    out.append("\\* one of the two lossless rates is a generator limit (\"(gen)\" or \"(paced gen)\"): "
               "that ratio compares what the generator reached in the two runs, not the tools.")
    return out


def query_table(res: dict) -> list[str]:
    out = ["### Query latency (stenoctl query on an imported store)", ""]
    if res.get("skipped"):
        return out + [f"*not measured: {res['skipped']}*"]
    if res.get("cli_startup_ms"):
        out += [f"Times are as a user sees them: from starting `stenoctl query` to its first byte / its end on stdout; "
                f"the CLI's start-up alone (`stenoctl query --help`) took {res['cli_startup_ms']:.0f} ms.", ""]
    out += ["| store packets | import s | index B/pkt | query | answer packets | first byte ms | total ms |",
            "|---|---|---|---|---|---|---|"]
    for st in res["stores"]:
        for q in st["queries"]:
            out.append(f"| {st['packets']:,} | {st['import_s']:.1f} | {_num(st.get('index_bytes_per_pkt'))} | "
                       f"`{q['query']}` | {_num(q.get('packets'), '{:,}')} | {_num(q.get('first_byte_ms'), '{:.0f}')} | "
                       f"{_num(q.get('total_ms'), '{:.0f}')} |" + (f" error: {q['error'][:120]}" if q.get("error") else ""))
    return out


def server_table(res: dict) -> list[str]:
    out = ["### Server (large answer)", ""]
    if res.get("skipped"):
        return out + [f"*not measured: {res['skipped']}*"]
    out += ["| transport | answer MB | MB/s | first byte ms | total ms |", "|---|---|---|---|---|"]
    for r in res["runs"]:
        out.append(f"| {r['transport']} | {_num(r.get('mb'), '{:.1f}')} | {_num(r.get('mb_s'), '{:.0f}')} | "
                   f"{_num(r.get('first_byte_ms'), '{:.0f}')} | {_num(r.get('total_ms'), '{:.0f}')} |"
                   + (f" error: {r['error'][:120]}" if r.get("error") else ""))
    ul = res.get("under_load")
    if ul and ul.get("skipped"):
        out += ["", f"Capture under client load: not measured ({ul['skipped']})."]
    elif ul:
        out += ["", f"Capture loss of stenoxdp at {fmt_pps(ul['pps'])} ({ul['frame']}-byte frames, {ul['seconds']:.0f} s) "
                f"while HTTPS clients pull 32 MB answers continuously from the server (same machine and disk):", "",
                "| clients | offered | captured / sent | loss % | answers pulled | MB pulled | client errors |",
                "|---|---|---|---|---|---|---|"]
        for p in ul["phases"]:
            out.append(f"| {p['clients']} | {fmt_pps(p.get('offered_pps'))} | {p['captured']:,} / {p['sent']:,} | "
                       f"{_num(p.get('loss_pct'), '{:.2f}')} | {p['client_answers']} | {p['client_bytes'] / 1e6:.0f} | "
                       f"{p['client_errors']} |" + (f" error: {p['error'][:100]}" if p.get("error") else ""))
    return out

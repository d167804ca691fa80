"""The one module that imports rich: tables and live views for stenoctl."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

# piped output (scripts, logs) gets a fixed wide layout instead of rich's 80-column guess
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True)


def table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def _si(x: float, unit: str = "") -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suf}{unit}"
    return f"{x:.0f}{unit}"


def _horizon(stamp_ns) -> str:
    if not stamp_ns:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(stamp_ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_status(docs: list[dict], con: Console | None = None) -> None:
    con = con or console
    if not docs:
        con.print("no stenoxdp capture is running")
        return
    for d in docs:
        for ifc in d.get("ifaces", []):
            st = ifc.get("store", {})
            x = ifc.get("xdp", {})
            r = ifc.get("rates", {})
            head = (f"[bold]{ifc['name']}[/bold] (pid {d['pid']})  {_si(r.get('pps', 0), 'pps')}  "
                    f"{_si(8 * r.get('bps', 0), 'bit/s')}  filter: {ifc.get('filter') or '-'}")
            con.print(head)
            con.print(f"  xdp: seen {x.get('seen_pkts', 0)}  redirected {x.get('redirected', 0)}  "
                      f"redirect_fail {x.get('redirect_fail', 0)}  filtered {x.get('filtered', 0)}  "
                      f"parse_err {x.get('parse_err', 0)}  oversize {x.get('oversize', 0)}")
            free = st.get("free_percent")
            con.print(f"  store {ifc.get('dir')}: {st.get('files', 0)} files (+{st.get('open_files', 0)} open), "
                      f"{_si(st.get('packet_bytes', 0), 'B')} packets, {_si(st.get('index_bytes', 0), 'B')} index, "
                      f"oldest {_horizon(st.get('oldest_stamp_ns'))}, free "
                      f"{'-' if free is None else f'{free:.1f}%'}")
            rows = []
            for q in ifc.get("queues", []):
                c, k = q.get("counters", {}), q.get("xsk", {})
                rows.append([q.get("queue"), "up" if q.get("alive") else "DOWN", c.get("packets", 0),
                             _si(c.get("wire_bytes", 0), "B"), k.get("rx_dropped", 0), k.get("rx_ring_full", 0),
                             k.get("rx_fill_ring_empty_descs", 0), c.get("disk_full_waits", 0),
                             q.get("files_closed", 0), q.get("restarts", 0), q.get("last_error") or ""])
            con.print(table("", ["queue", "writer", "packets", "bytes", "rx_dropped", "ring_full", "fill_empty",
                                 "disk_full", "files", "restarts", "note"], rows))
            for r in ifc.get("retention") or []:
                st = r
                con.print(f"  retention: {r.get('files_deleted', 0)} files / {_si(r.get('bytes_deleted', 0), 'B')} "
                          f"deleted {r.get('deleted_by_reason') or ''}  oldest packet kept "
                          f"{_horizon(r.get('oldest_last_ts_ns'))}"
                          + (f"  error: {st['last_error']}" if st.get("last_error") else ""))

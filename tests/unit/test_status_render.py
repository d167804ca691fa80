"""stenoctl status rendering, on a fixed-width console (no capture needed)."""
from __future__ import annotations

from rich.console import Console

from stenoxdp import ui

DOC = {
    "pid": 4242, "started": 0, "time": 1,
    "ifaces": [{
        "name": "ens5f1", "dir": "/srv/steno", "filter": "not port 443",
        "xdp": {"seen_pkts": 1000, "redirected": 990, "redirect_fail": 0, "filtered": 10, "parse_err": 2, "oversize": 1},
        "rates": {"pps": 125000.0, "bps": 93750000.0}, "totals": {"packets": 990, "bytes": 742500},
        "store": {"files": 12, "open_files": 2, "packet_bytes": 5 << 30, "index_bytes": 80 << 20,
                  "oldest_stamp_ns": 1_764_000_000_000_000_000, "free_percent": 42.5},
        "queues": [{"queue": 0, "alive": True, "counters": {"packets": 990, "wire_bytes": 742500, "disk_full_waits": 0},
                    "xsk": {"rx_dropped": 3, "rx_ring_full": 7, "rx_fill_ring_empty_descs": 0},
                    "files_closed": 12, "restarts": 1, "last_error": ""}],
        "retention": [{"files_deleted": 4, "bytes_deleted": 4 << 30, "deleted_by_reason": {"min_free_percent": 4},
                       "oldest_last_ts_ns": 1_764_000_060_000_000_000}],
    }],
}


def test_render_status_shows_rates_drops_store_and_retention():
    con = Console(width=160, record=True, color_system=None)
    ui.render_status([DOC], con)
    out = con.export_text()
    assert "ens5f1" in out and "125.00kpps" in out and "750.00Mbit/s" in out and "not port 443" in out
    assert "redirected 990" in out and "filtered 10" in out and "parse_err 2" in out
    assert "12 files (+2 open)" in out and "free 42.5%" in out and "2025-11-24T16:00:00Z" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("│ 0"))
    assert "990" in row and " 3 " in row and " 7 " in row
    assert "4 files" in out and "min_free_percent" in out


def test_render_status_nothing_running():
    con = Console(width=80, record=True, color_system=None)
    ui.render_status([], con)
    assert "no stenoxdp capture is running" in con.export_text()

"""stenoctl serve: clear errors, serves a store to stenoread, stops on SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from .test_server_common import C, certdir, local_answer, read_pcap, server_store  # noqa: F401


def test_serve_missing_certs(tmp_path, stenoctl):
    (tmp_path / "store").mkdir()
    r = subprocess.run([stenoctl, "serve", "--dir", str(tmp_path / "store"), "--certs", str(tmp_path / "nocerts"),
                        "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "nocerts does not exist" in r.stderr and "stenoctl certs init" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([stenoctl, "serve", "--dir", str(tmp_path / "store"), "--certs", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr


def test_serve_store(server_store, certdir, tmp_path, stenoctl):
    cdir = certdir[0]
    p = subprocess.Popen([stenoctl, "serve", "--dir", str(server_store.root), "--certs", str(cdir), "--port", "0",
                          "--grpc-port", "0", "--audit-log", str(tmp_path / "audit.log")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = p.stderr.readline()
            m = re.search(r"HTTPS \(Stenographer API\) on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
            assert line or p.poll() is None, "stenoctl serve exited early"
        assert port
        cfg = tmp_path / "steno.json"
        r = subprocess.run([stenoctl, "certs", "steno-config", "--dir", str(cdir), "--port", str(port), "-o", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        env = dict(os.environ, STENOGRAPHER_CONFIG=str(cfg))
        r = subprocess.run(["stenoread", f"host {C}", "-w", str(tmp_path / "o.pcap")], env=env,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert read_pcap((tmp_path / "o.pcap").read_bytes()) == read_pcap(local_answer(server_store, f"host {C}"))
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert "outcome=ok" in (tmp_path / "audit.log").read_text()

"""stenoctl's front door: help works without root or bcc, usage errors are one
clear message and exit 2, never a traceback."""
from __future__ import annotations

import os
import subprocess

from tests.conftest import STENOCTL


def sh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([STENOCTL, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_lists_the_command_groups():
    r = sh("--help")
    assert r.returncode == 0
    for cmd in ("capture", "status", "run", "query", "import", "serve", "certs", "filter", "config"):
        assert cmd in r.stdout, cmd


def test_help_needs_no_root_and_no_bcc(tmp_path):
    # a python path that hides Debian's bcc: --help must not import it
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", STENOCTL, "capture", "--help"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "--dedicated" in r.stdout


def test_unknown_command_and_missing_option_are_usage_errors():
    r = sh("nosuchcommand")
    assert r.returncode == 2 and "No such command" in r.stderr and "Traceback" not in r.stderr
    r = sh("capture", "--iface", "x")
    assert r.returncode == 2 and "--dir" in r.stderr and "Traceback" not in r.stderr


def test_status_without_a_running_capture(tmp_path):
    r = sh("status", "--status-dir", str(tmp_path))
    assert r.returncode == 3
    assert "no stenoxdp capture is running" in r.stdout
    r = sh("status", "--json", "--status-dir", str(tmp_path))
    assert r.returncode == 3 and r.stdout.strip() == "[]"


def test_capture_refuses_bad_write_mode(tmp_path):
    r = sh("capture", "--iface", "lo", "--dir", str(tmp_path), "--write-mode", "sometimes")
    assert r.returncode == 2 and "--write-mode" in r.stderr and "Traceback" not in r.stderr

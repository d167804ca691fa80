"""`make demo`: the main job on an embedded default.

Builds the lab (client and server namespaces whose link is mirrored onto a
capture port, like a SPAN port), captures on it with `stenoctl capture`, sends
real traffic (ping, ping6, HTTP over TCP, DNS-style UDP), queries the live
store while capture runs, stops capture cleanly and shows the files with
tcpdump. Everything it creates is removed on exit."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .lab import SERVER4, SERVER6, Lab

BIN = Path(sys.executable).parent
STENOCTL = str(BIN / "stenoctl")


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if r.stdout:
        print(r.stdout.rstrip())
    if r.returncode and r.stderr:
        print(r.stderr.rstrip())
    return r


DNS_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53)); s.settimeout(30)
try:
    while True:
        q, a = s.recvfrom(2048)
        # answer: same id, QR set, one A record 198.18.0.2
        ans = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6\x12\x00\x02"
        s.sendto(ans, a)
except socket.timeout:
    pass
"""
DNS_CLIENT = r"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for i, name in enumerate(["www.example.org", "sensor.example.net", "stenoxdp.example.com"]):
    q = struct.pack(">HHHHHH", 0x1000 + i, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    s.sendto(q, ("198.18.0.2", 53)); print(len(s.recvfrom(2048)[0]), "byte answer for", name)
"""


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates namespaces and loads an XDP program)", file=sys.stderr)
        return 77
    work = Path(tempfile.mkdtemp(prefix="stenoxdp-demo-"))
    store = work / "store"
    status_dir = work / "run"
    cap = None
    try:
        with Lab(span=True, queues=2) as lab:
            say(f"lab: client {lab.client_ns} <-> server {lab.server_ns}, mirrored onto capture port {lab.iface}")
            say("starting capture")
            cmd = [STENOCTL, "capture", "--iface", lab.iface, "--dir", str(store), "--dedicated",
                   "--status-dir", str(status_dir), "--rotate-seconds", "20"]
            print("$ " + " ".join(cmd), flush=True)
            cap = subprocess.Popen(cmd, start_new_session=True)
            deadline = time.time() + 60
            while time.time() < deadline:
                if cap.poll() is not None:
                    print(f"capture exited early ({cap.returncode})", file=sys.stderr)
                    return 1
                if any(p.stem.isdigit() for p in status_dir.glob("*.json")):
                    break
                time.sleep(0.2)
            say("real traffic: ping, ping6, HTTP, DNS")
            lab.spawn([sys.executable, "-m", "http.server", "-b", "::", "8080", "-d", str(Path(__file__).parent)],
                      ns=lab.server_ns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.spawn([sys.executable, "-c", DNS_SERVER], ns=lab.server_ns)
            time.sleep(0.8)
            print(lab.exec(["ping", "-c", "3", "-i", "0.2", SERVER4], ns=lab.client_ns, check=False).stdout.splitlines()[-2])
            print(lab.exec(["ping", "-6", "-c", "3", "-i", "0.2", SERVER6], ns=lab.client_ns, check=False).stdout.splitlines()[-2])
            for url in (f"http://{SERVER4}:8080/", f"http://[{SERVER6}]:8080/lab.py"):
                r = lab.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} bytes", url],
                             ns=lab.client_ns, check=False)
                print(f"GET {url} -> {r.stdout}")
            print(lab.exec([sys.executable, "-c", DNS_CLIENT], ns=lab.client_ns, check=False).stdout.rstrip())
            time.sleep(1.5)
            say("live status")
            sh([STENOCTL, "status", "--status-dir", str(status_dir)])
            say("query the live store (the file is still open)")
            out = work / "http.pcap"
            r = sh([STENOCTL, "query", f"host {SERVER4} and tcp and port 8080", "--dir", str(store), "-w", str(out)])
            if r.returncode == 0:
                sh(["tcpdump", "-nn", "-r", str(out), "-c", "12"])
                r = sh([STENOCTL, "query", "udp and port 53", "--dir", str(store), "-w", str(work / "dns.pcap")])
                if r.returncode == 0:
                    sh(["tcpdump", "-nn", "-r", str(work / "dns.pcap")])
                r = sh([STENOCTL, "query", f"icmp6 or (icmp and host {SERVER4})", "--dir", str(store), "-w", str(work / "icmp.pcap")])
                if r.returncode == 0:
                    sh(["tcpdump", "-nn", "-r", str(work / "icmp.pcap")])
            say("stopping capture (SIGINT): files are finalised")
            cap.send_signal(signal.SIGINT)
            rc = cap.wait(timeout=30)
            cap = None
            print(f"capture exited with {rc}")
            files = sorted(store.glob("packets/*/q*/*.pcap"))
            say(f"{len(files)} packet file(s), plain nanosecond pcap: tcpdump reads them as they are")
            total = 0
            for f in files:
                n = len(subprocess.run(["tcpdump", "-nn", "-r", str(f)], capture_output=True, text=True).stdout.splitlines())
                total += n
                print(f"  {f.relative_to(store)}: {n} packets, {f.stat().st_size} bytes")
            if files:
                sh(["tcpdump", "-nn", "-r", str(files[0]), "-c", "8"])
            attached = subprocess.run(["ip", "-d", "link", "show", lab.iface], capture_output=True, text=True).stdout
            print(f"XDP program still attached after stop: {'yes' if 'prog/xdp' in attached else 'no'}")
            say(f"demo done: {total} packets captured")
            return 0 if total > 0 and rc == 0 else 1
    finally:
        if cap is not None and cap.poll() is None:
            cap.send_signal(signal.SIGINT)
            try:
                cap.wait(timeout=20)
            except subprocess.TimeoutExpired:
                cap.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Build tests/corpus/varied.pcap: a small, varied capture of real traffic for
the query oracle test (tests/unit/test_oracle.py). Needs root (network
namespaces); the result is checked in so the test itself does not.

    sudo /opt/stenoxdp-venv/bin/python -m tests.corpus.make_varied [OUT]

Lab(span=True): a client and a server namespace whose link is mirrored onto the
capture interface, where tcpdump (nanosecond timestamps) records:
  * DNS-like UDP to port 53 (IPv4 and IPv6), a Python responder in the server;
  * HTTP over TCP: python -m http.server in the server, curl in the client,
    IPv4 and IPv6, a few sizes;
  * TLS: openssl s_server / s_client (IPv4);
  * ping / ping -6, and ping -s 3000 (IPv4 and IPv6 fragments);
  * the hand-made frames of tests/corpus/frames.py injected twice (VLAN/QinQ,
    MPLS, ARP, LLDP, IPv6 extension headers, fragments, malformed, runts).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "varied.pcap"

DNS_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
s.settimeout(30)
try:
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(d[:2] + b'\x81\x80' + d[4:] + b'\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6\x12\x00\x02', a)
except socket.timeout:
    pass
"""

DNS_CLIENT = r"""
import socket, struct, sys, time
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1)
for i in range(int(sys.argv[2])):
    name = b''.join(bytes([len(p)]) + p for p in (b'host%d' % i, b'example', b'test')) + b'\0'
    s.sendto(struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0) + name + b'\x00\x01\x00\x01', (sys.argv[1], 53))
    try:
        s.recvfrom(2048)
    except socket.timeout:
        pass
    time.sleep(0.005)
"""


def main(out: Path = OUT) -> int:
    if os.geteuid() != 0:
        print("make_varied: needs root (network namespaces)", file=sys.stderr)
        return 77
    from stenoxdp.lab import CLIENT4, CLIENT6, SERVER4, SERVER6, Lab

    from .frames import FRAMES

    work = Path(tempfile.mkdtemp(prefix="sxdp-varied-"))
    www = work / "www"
    www.mkdir()
    for n in (100, 3000, 20000, 70000):
        (www / f"f{n}.bin").write_bytes(os.urandom(n))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(work / "k.pem"), "-out", str(work / "c.pem"), "-days", "2", "-subj", "/CN=server"],
                   check=True, capture_output=True)
    raw = work / "raw.pcap"
    frames = [f for _, f in FRAMES if 14 <= len(f) <= 1514]  # a socket cannot send runts below 14 bytes
    with Lab(span=True) as lab:
        c, s = lab.client_ns, lab.server_ns
        tcpd = subprocess.Popen(["tcpdump", "-i", lab.iface, "-n", "-s", "0", "-U", "--time-stamp-precision=nano",
                                 "-w", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            time.sleep(1.5)
            lab.spawn([sys.executable, "-c", DNS_SERVER, SERVER4], ns=s)
            lab.spawn([sys.executable, "-c", DNS_SERVER, SERVER6], ns=s)
            lab.spawn([sys.executable, "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)], ns=s,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.spawn(["openssl", "s_server", "-accept", "4433", "-cert", str(work / "c.pem"), "-key",
                       str(work / "k.pem"), "-www", "-quiet"], ns=s, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            lab.send_frames(frames, pps=500)
            lab.exec([sys.executable, "-c", DNS_CLIENT, SERVER4, "400"], ns=c)
            lab.exec([sys.executable, "-c", DNS_CLIENT, SERVER6, "200"], ns=c)
            for host in (SERVER4, f"[{SERVER6}]") * 4:
                for n in (100, 3000, 20000, 70000):
                    lab.exec(["curl", "-s", "-o", "/dev/null", "--max-time", "5", f"http://{host}:8080/f{n}.bin"], ns=c,
                             check=False)
            for _ in range(6):
                lab.exec(["openssl", "s_client", "-connect", f"{SERVER4}:4433", "-quiet", "-no_ign_eof"], ns=c,
                         check=False, timeout=10)
            lab.exec(["ping", "-c", "30", "-i", "0.02", SERVER4], ns=c, check=False)
            lab.exec(["ping", "-6", "-c", "30", "-i", "0.02", SERVER6], ns=c, check=False)
            lab.exec(["ping", "-c", "10", "-i", "0.05", "-s", "3000", SERVER4], ns=c, check=False)
            lab.exec(["ping", "-6", "-c", "10", "-i", "0.05", "-s", "3000", SERVER6], ns=c, check=False)
            lab.exec(["ping", "-c", "2", "-i", "0.05", "198.18.0.77"], ns=c, check=False)  # ARP, no answer
            lab.send_frames(frames, pps=500)
            time.sleep(1.0)
        finally:
            os.killpg(tcpd.pid, signal.SIGINT)
            tcpd.wait(timeout=10)
    out.write_bytes(raw.read_bytes())
    subprocess.run(["rm", "-rf", str(work)], check=False)
    n = subprocess.run(["tcpdump", "-r", str(out), "-n"], capture_output=True, text=True).stdout.count("\n")
    print(f"wrote {out}: {out.stat().st_size} bytes, {n} packets")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))

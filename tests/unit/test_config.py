"""The config model: every kind of mistake names its field; the Stenographer mapping (Debian's
/etc/stenographer/config and a richer sample); dump round-trips; docs/config.md is current; memory plan."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stenoxdp import config as C
from stenoxdp import memory
from stenoxdp.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GOOD = """
[[iface]]
name = "eth1"
dir = "/data/a"
"""


def load(tmp_path, text: str) -> C.Config:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return C.load_config(p)


def err(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text)
    return str(ei.value)


def test_minimal_defaults(tmp_path):
    cfg = load(tmp_path, GOOD)
    (c,) = cfg.ifaces
    assert c.name == "eth1" and c.dir == Path("/data/a") and c.index_dir is None and c.queues is None
    assert c.retention == C.Retention(min_free_percent=10.0)
    assert (c.rotate_seconds, c.rotate_bytes, c.frame_size, c.umem_frames, c.ring_size, c.batch_size) == \
        (60.0, 4 << 30, 4096, 16384, 8192, 512)
    assert cfg.server is None and cfg.status_dir == Path("/run/stenoxdp")


def test_units_and_relative_paths(tmp_path):
    cfg = load(tmp_path, GOOD.replace('"/data/a"', '"rel/dir"') + """
rotate_bytes = "512MiB"
rotate_seconds = "5m"
[iface.retention]
max_bytes = "2GiB"
max_age_s = "7d"
max_files = 100
min_free_percent = 5
""")
    c = cfg.ifaces[0]
    assert c.dir == tmp_path / "rel/dir"
    assert c.rotate_bytes == 512 << 20 and c.rotate_seconds == 300
    assert c.retention == C.Retention(5.0, 2 << 30, 7 * 86400.0, 100)


@pytest.mark.parametrize("extra,field,words", [
    ("[iface.retention]\nmin_free_percent = 120", "iface[0].retention.min_free_percent", "between 0 and 99 (got 120)"),
    ("[iface.retention]\nmax_bytes = \"lots\"", "iface[0].retention.max_bytes", "size in bytes"),
    ("[iface.retention]\nmax_bytes = 10", "iface[0].retention.max_bytes", "at least 1MiB"),
    ("[iface.retention]\nmax_age_s = -1", "iface[0].retention.max_age_s", "more than 0"),
    ("[iface.retention]\nmax_files = 0", "iface[0].retention.max_files", "at least 1"),
    ("[iface.retention]\nmin_fre_percent = 1", "iface[0].retention.min_fre_percent", "did you mean 'min_free_percent'"),
    ("queues = \"four\"", "iface[0].queues", "whole number"),
    ("queues = 0", "iface[0].queues", "between 1 and 1024"),
    ("dedicated = \"yes\"", "iface[0].dedicated", "true or false"),
    ("frame_size = 3000", "iface[0].frame_size", "2048 or 4096"),
    ("ring_size = 1000", "iface[0].ring_size", "power of two"),
    ("umem_frames = 1024", "iface[0].umem_frames", "at least ring_size"),
    ("batch_size = 20000", "iface[0].batch_size", "between 1 and ring_size"),
    ("rotate_bytes = \"8GiB\"", "iface[0].rotate_bytes", "between 64KiB and 4GiB"),
    ("rotate_seconds = 0", "iface[0].rotate_seconds", "more than 0"),
    ("write_mode = \"fast\"", "iface[0].write_mode", "auto, direct, buffered"),
    ("filter = \"tcp\"\nfilter_hex = \"0028000000000000\"", "iface[0].filter_hex", "not both"),
    ("filter_hex = \"zz\"", "iface[0].filter_hex", "16 hex digits per instruction"),
    ("colour = 1", "iface[0].colour", "unknown key"),
])
def test_each_mistake_names_its_field(tmp_path, extra, field, words):
    msg = err(tmp_path, GOOD + extra + "\n")
    assert f"{field}:" in msg and words in msg, msg


def test_second_iface_is_numbered(tmp_path):
    msg = err(tmp_path, GOOD + '[[iface]]\nname = "eth2"\ndir = "/d"\n[iface.retention]\nmin_free_percent = 120\n')
    assert "iface[1].retention.min_free_percent: must be between 0 and 99 (got 120)" in msg


@pytest.mark.parametrize("text,field,words", [
    ("", "iface", "no interface configured"),
    ('[[iface]]\ndir = "/d"\n', "iface[0].name", "required"),
    ('[[iface]]\nname = "eth1"\n', "iface[0].dir", "required"),
    ('[[iface]]\nname = "bad/name"\ndir = "/d"\n', "iface[0].name", "not an interface name"),
    (GOOD + '[[iface]]\nname = "eth1"\ndir = "/e"\n', "iface[1].name", "already captured by iface[0]"),
    (GOOD + '[server]\nport = 1234\n', "server.certs", "required when a server port is set"),
    (GOOD + '[server]\nhost = "localhost"\n', "server.host", "IP address"),
    (GOOD + '[server]\nport = 70000\ncerts = "/c"\n', "server.port", "between 1 and 65535"),
    (GOOD + '[server]\nport = 80\ngrpc_port = 80\ncerts = "/c"\n', "server.grpc_port", "must differ"),
    (GOOD + '[server]\nmax_concurrent = 0\n', "server.max_concurrent", "at least 1"),
    (GOOD + 'status_dir = "/x"\n', "iface[0].status_dir", "must come before the first [[iface]]"),
    ('staus_dir = "/x"\n' + GOOD, "staus_dir", "did you mean 'status_dir'"),
    ('status_dir = 5\n' + GOOD, "status_dir", "path string"),
    ('[[iface]\nname=1', None, "not valid TOML"),
])
def test_structural_mistakes(tmp_path, text, field, words):
    msg = err(tmp_path, text)
    assert words in msg and (field is None or f"{field}:" in msg), msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        C.load_config(tmp_path / "nope.toml")


def test_dump_round_trips(tmp_path):
    cfg = C.from_dict(C.tomllib.loads(C.EXAMPLE))
    again = load(tmp_path, C.dump(cfg))
    assert again == cfg
    assert "[[iface]]" in C.dump(cfg) and "[iface.retention]" in C.dump(cfg)


def test_from_flags():
    cfg = C.from_flags(ifaces=["sxdp0", "sxdp1"], dir="/tmp/s", dedicated=True, queues=2, rotate_seconds=5)
    assert [c.name for c in cfg.ifaces] == ["sxdp0", "sxdp1"] and all(c.dedicated and c.queues == 2 for c in cfg.ifaces)
    with pytest.raises(ConfigError, match=r"^--frame-size: must be 2048 or 4096"):
        C.from_flags(ifaces="x", dir="/tmp/s", frame_size=1000)
    with pytest.raises(ConfigError, match="--bogus"):
        C.from_flags(ifaces="x", dir="/tmp/s", bogus=1)


# ---- Stenographer ---------------------------------------------------------------
DEBIAN = """{
  "Threads": [
    { "PacketsDirectory": "/var/lib/stenographer/thread0/packets"
    , "IndexDirectory": "/var/lib/stenographer/thread0/index"
    , "MaxDirectoryFiles": 30000
    , "DiskFreePercentage": 10
    }
  ]
  , "StenotypePath": "/usr/sbin/stenotype"
  , "Interface": "eth0"
  , "Port": 1234
  , "Host": "127.0.0.1"
  , "Flags": []
  , "CertPath": "/etc/stenographer/certs"
}"""

RICH = {
    "Threads": [
        {"PacketsDirectory": "/disk1/packets", "IndexDirectory": "/ssd/index1", "DiskFreePercentage": 25,
         "MaxDirectoryFiles": 5000},
        {"PacketsDirectory": "/disk2/packets", "IndexDirectory": "/ssd/index2"},
    ],
    "StenotypePath": "/usr/local/bin/stenotype",
    "Interface": "em1",
    "Port": 8443,
    "Host": "10.1.2.3",
    "CertPath": "/etc/steno/certs",
    "MaxOpenFiles": 100000,
    "Flags": ["--filter=0028000000000000", "--fileage_sec=30", "--filesize_mb=1024", "--blocks=512", "-v", "--seccomp=none"],
    "Rpc": {"CaCert": "/rpc/ca.pem", "ServerKey": "/rpc/key.pem", "ServerCert": "/rpc/cert.pem", "ServerPort": 8444,
            "ServerPcapPath": "/tmp/pcaps", "ServerPcapMaxSize": 1000000000, "ClientPcapChunkSize": 1000,
            "ClientPcapMaxSize": 5000000},
    "Colour": "blue",
}


def test_stenographer_debian_default(tmp_path):
    p = tmp_path / "config"
    p.write_text(DEBIAN)
    cfg, ignored = C.from_stenographer(p)
    (c,) = cfg.ifaces
    assert c.name == "eth0" and c.dir == Path("/var/lib/stenographer/thread0/packets")
    assert c.index_dir == Path("/var/lib/stenographer/thread0/index") and not c.extra_stores
    assert c.retention == C.Retention(min_free_percent=10.0, max_files=30000)
    assert cfg.server == C.ServerConfig(host="127.0.0.1", port=1234, certs=Path("/etc/stenographer/certs"))
    assert any(x.startswith("StenotypePath:") for x in ignored)
    assert not c.dedicated and any(x.startswith("Interface:") for x in ignored)


def test_stenographer_installed_config_if_present():
    p = Path("/etc/stenographer/config")
    if not p.exists():
        pytest.skip("stenographer-common is not installed")
    cfg, _ = C.from_stenographer(p)
    assert cfg.ifaces[0].retention.min_free_percent > 0


def test_stenographer_rich(tmp_path):
    p = tmp_path / "config"
    p.write_text(json.dumps(RICH))
    cfg, ignored = C.from_stenographer(p)
    (c,) = cfg.ifaces
    assert c.name == "em1" and c.filter_hex == "0028000000000000"
    assert c.rotate_seconds == 30 and c.rotate_bytes == 1024 << 20
    assert c.retention == C.Retention(min_free_percent=25.0, max_files=5000)
    assert [(s.dir, s.index_dir, s.retention) for s in c.stores()] == [
        (Path("/disk1/packets"), Path("/ssd/index1"), C.Retention(25.0, None, None, 5000)),
        (Path("/disk2/packets"), Path("/ssd/index2"), C.Retention(10.0, None, None, 30000))]
    assert c.store_for_queue(3).dir == Path("/disk2/packets")
    s = cfg.server
    assert (s.host, s.port, s.grpc_port, s.certs, s.max_answer_bytes) == \
        ("10.1.2.3", 8443, 8444, Path("/etc/steno/certs"), 1000000000)
    keys = {x.split(":")[0] for x in ignored}
    for k in ("StenotypePath", "MaxOpenFiles", "Flags", "Rpc.CaCert", "Rpc.ServerKey", "Rpc.ServerCert",
              "Rpc.ServerPcapPath", "Rpc.ClientPcapChunkSize", "Rpc.ClientPcapMaxSize", "Colour", "Threads"):
        assert k in keys, k
    assert any("--blocks=512" in x and "umem_frames" in x for x in ignored)
    # round trip through the TOML dump keeps the extra store
    assert C.from_dict(C.tomllib.loads(C.dump(cfg))) == cfg


@pytest.mark.parametrize("mutate,words", [
    (lambda d: d.pop("Interface"), "Interface: missing"),
    (lambda d: d.update(Threads=[]), "Threads: missing or empty"),
    (lambda d: d["Threads"][0].pop("PacketsDirectory"), "Threads[0].PacketsDirectory: missing"),
    (lambda d: d["Threads"][0].update(DiskFreePercentage=150), "Threads[0].DiskFreePercentage: must be between 0 and 99"),
    (lambda d: d["Threads"][1].update(MaxDirectoryFiles="many"), "Threads[1].MaxDirectoryFiles: must be a whole number"),
    (lambda d: d.update(Port="1234"), "Port: must be a port number"),
    (lambda d: d.update(Port=99999), "Port: must be between 1 and 65535"),
    (lambda d: d.update(Host="steno.example"), "Host: must be an IP address"),
    (lambda d: d.update(Flags=["--filter=xyz"]), "--filter: must be classic BPF in hex"),
])
def test_stenographer_mistakes(tmp_path, mutate, words):
    d = json.loads(json.dumps(RICH))
    mutate(d)
    p = tmp_path / "config"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError) as ei:
        C.from_stenographer(p)
    assert words in str(ei.value), str(ei.value)


def test_stenographer_not_json(tmp_path):
    p = tmp_path / "config"
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        C.from_stenographer(p)


# ---- docs -----------------------------------------------------------------------
def test_docs_are_current():
    doc = (REPO / "docs" / "config.md").read_text()
    assert doc == C.docs_markdown(), "docs/config.md is stale: run `stenoctl config docs -o docs/config.md`"
    for f in C.dataclasses.fields(C.IfaceConfig):
        assert f"`iface.{f.name}`" in doc


def test_config_show_cli(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD + "queues = 2\n")
    out = subprocess.run([sys.executable, "-m", "stenoxdp", "config", "show", "--config", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'name = "eth1"' in out.stdout and "# memory:" in out.stdout and "eth1: 2 queue(s)" in out.stdout
    p.write_text(GOOD + "queues = -1\n")
    out = subprocess.run([sys.executable, "-m", "stenoxdp", "config", "show", "--config", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "iface[0].queues: must be between 1 and 1024" in out.stderr
    assert "Traceback" not in out.stderr


# ---- memory ---------------------------------------------------------------------
def test_memory_plan_and_refusal():
    cfg = C.from_flags(ifaces=["a", "b"], dir="/tmp/s", queues=4)
    mp = memory.plan(cfg, available=64 << 30, limit=None, cap=False)
    q = mp.ifaces[0].per_queue
    assert q.umem == 16384 * 4096 and mp.locked == 8 * q.locked and mp.total == 8 * q.total
    assert mp.problems() == []
    # a 2 GB VM: refused, naming what to lower
    small = memory.plan(cfg, available=200 << 20, limit=None, cap=False)
    (msg,) = small.problems()
    assert "umem_frames" in msg and "queues" in msg
    with pytest.raises(ConfigError, match="umem_frames"):
        memory.check(cfg, available=200 << 20, limit=None, cap=False)
    # memlock limit without CAP_IPC_LOCK
    lim = memory.plan(cfg, available=64 << 30, limit=8 << 20, cap=False)
    assert any("RLIMIT_MEMLOCK" in m for m in lim.problems())
    assert memory.plan(cfg, available=64 << 30, limit=8 << 20, cap=True).problems() == []


def test_memory_queue_count_from_nic(tmp_path):
    for i in range(3):
        (tmp_path / "eth9" / "queues" / f"rx-{i}").mkdir(parents=True)
    (tmp_path / "eth9" / "queues" / "tx-0").mkdir()
    assert memory.rx_queue_count("eth9", str(tmp_path)) == 3
    assert memory.rx_queue_count("nope", str(tmp_path)) is None
    cfg = C.from_flags(ifaces="eth9", dir="/tmp/s")
    mp = memory.plan(cfg, queue_count=lambda n: memory.rx_queue_count(n, str(tmp_path)), available=None, limit=None,
                     cap=True)
    assert mp.ifaces[0].queues == 3 and mp.ifaces[0].queues_known


def test_config_check_and_json_cli(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD.replace('"/data/a"', f'"{tmp_path}/store"') + "queues = 1\n")
    st = [sys.executable, "-m", "stenoxdp", "config"]
    out = subprocess.run(st + ["check", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "config ok" in out.stdout, out.stderr
    out = subprocess.run(st + ["show", "--json", "--config", str(p)], capture_output=True, text=True, timeout=60)
    doc = json.loads(out.stdout)
    assert doc["config"]["ifaces"][0]["name"] == "eth1" and doc["memory"]["locked"] > 16 << 20
    steno = tmp_path / "steno.json"
    steno.write_text(json.dumps(RICH))
    out = subprocess.run(st + ["show", "--stenographer-config", str(steno)], capture_output=True, text=True, timeout=60)
    assert "# ignored from the Stenographer config:" in out.stdout and "StenotypePath" in out.stdout
    # its certificate directory does not exist here: a problem, and exit 2
    assert out.returncode == 2 and "server.certs" in out.stdout
    out = subprocess.run(st + ["show"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "exactly one of --config FILE or --stenographer-config FILE" in out.stderr

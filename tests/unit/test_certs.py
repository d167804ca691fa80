"""Certificates: layout, permissions, extensions, issue/revoke/CRL reload, errors."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stenoxdp.errors import CertError
from stenoxdp.server import certs


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(scope="module")
def cdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    certs.init(d, "198.18.0.1")
    return d


def test_layout_and_modes(cdir):
    assert mode(cdir / "ca_key.pem") == 0o400
    assert mode(cdir / "server_key.pem") == 0o400
    assert mode(cdir / "client_key.pem") == 0o440
    for n in ("ca_cert.pem", "server_cert.pem", "client_cert.pem", "crl.pem"):
        assert (cdir / n).is_file()


def test_extensions(cdir):
    ca = certs.load_cert(cdir / "ca_cert.pem")
    s = certs.load_cert(cdir / "server_cert.pem")
    c = certs.load_cert(cdir / "client_cert.pem")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    san = s.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("198.18.0.1") in ips and ipaddress.ip_address("127.0.0.1") in ips
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ExtendedKeyUsageOID.SERVER_AUTH in s.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert not s.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (s.not_valid_after_utc - s.not_valid_before_utc).days
    assert 700 <= days <= 740
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    # openssl agrees the chain and purposes are right
    for name, purpose in (("server", "sslserver"), ("client", "sslclient")):
        r = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(cdir / "ca_cert.pem"),
                            str(cdir / f"{name}_cert.pem")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr + r.stdout


def test_dns_host_san(tmp_path):
    certs.init(tmp_path, "sensor1.example.org")
    s = certs.load_cert(tmp_path / "server_cert.pem")
    san = s.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sensor1.example.org" in san.get_values_for_type(x509.DNSName)


def test_init_refuses_overwrite(cdir):
    with pytest.raises(CertError, match="already exists"):
        certs.init(cdir, "198.18.0.1")


def test_issue_revoke_and_reload(cdir):
    rev = certs.Revocations(cdir, interval=0)
    c, k = certs.issue(cdir, "alice")
    assert c.name == "alice_cert.pem" and mode(k) == 0o440
    serial = certs.load_cert(c).serial_number
    assert not rev.is_revoked(serial)
    time.sleep(0.01)
    assert certs.revoke(cdir, "alice") == serial
    assert rev.is_revoked(serial)
    crl = certs.read_crl(cdir)
    assert crl.is_signature_valid(certs.load_cert(cdir / "ca_cert.pem").public_key())
    # revoking a second client keeps the first
    certs.issue(cdir, "bob")
    s2 = certs.revoke(cdir, "bob")
    assert rev.is_revoked(serial) and rev.is_revoked(s2)
    states = {r["name"]: r["state"] for r in certs.list_certs(cdir)}
    assert states["alice"] == "revoked" and states["client"] == "valid"


def test_forged_crl_ignored(cdir, tmp_path):
    other = tmp_path / "other"
    certs.init(other, "127.0.0.1")
    rev = certs.Revocations(cdir, interval=0)
    c, _ = certs.issue(cdir, "carol")
    serial = certs.load_cert(c).serial_number
    good = (cdir / "crl.pem").read_bytes()
    # a CRL signed by another CA listing carol must not take effect
    b = x509.CertificateRevocationListBuilder()
    import shutil

    shutil.copy(cdir / "carol_cert.pem", other / "carol_cert.pem")
    certs.revoke(other, "carol")
    os.chmod(cdir / "crl.pem", 0o644)
    (cdir / "crl.pem").write_bytes((other / "crl.pem").read_bytes())
    assert not rev.is_revoked(serial)
    (cdir / "crl.pem").write_bytes(good)
    del b


def test_expired_issue(cdir):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    c, _ = certs.issue(cdir, "old", not_before=past, not_after=past + dt.timedelta(days=1))
    assert {r["name"]: r["state"] for r in certs.list_certs(cdir)}["old"] == "expired"


def test_missing_files_clear_error(tmp_path):
    with pytest.raises(CertError, match=r"ca_cert.pem does not exist.*stenoctl certs init"):
        certs.server_files(tmp_path)
    with pytest.raises(CertError, match="does not exist"):
        certs.server_files(tmp_path / "nope")
    with pytest.raises(CertError, match="not allowed"):
        certs.issue(tmp_path, "../x")


def test_bad_pem_clear_error(tmp_path):
    certs.init(tmp_path, "127.0.0.1")
    os.chmod(tmp_path / "server_cert.pem", 0o644)
    (tmp_path / "server_cert.pem").write_text("garbage\n")
    with pytest.raises(CertError, match="server_cert.pem is not a PEM certificate"):
        certs.server_files(tmp_path)


def test_cli(tmp_path, stenoctl):
    d = tmp_path / "c"
    r = subprocess.run([stenoctl, "certs", "init", "--dir", str(d), "--host", "localhost"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([stenoctl, "certs", "issue", "dave", "--dir", str(d)], capture_output=True, text=True)
    assert r.returncode == 0 and (d / "dave_cert.pem").exists()
    r = subprocess.run([stenoctl, "certs", "revoke", "dave", "--dir", str(d)], capture_output=True, text=True)
    assert r.returncode == 0 and "revoked dave" in r.stdout
    r = subprocess.run([stenoctl, "certs", "revoke", "nobody", "--dir", str(d)], capture_output=True, text=True)
    assert r.returncode == 2 and "nobody_cert.pem does not exist" in r.stderr and "Traceback" not in r.stderr


def test_owner_group(tmp_path):
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    certs.init(tmp_path, "127.0.0.1", owner=user, group=group)
    assert os.stat(tmp_path / "client_key.pem").st_gid == os.getegid()
    with pytest.raises(CertError, match="no such group"):
        certs.issue(tmp_path, "x", group="no-such-group-sxdp")
    with pytest.raises(CertError, match="no such user"):
        certs.init(tmp_path / "b", "127.0.0.1", owner="no-such-user-sxdp")


def test_deleted_crl_keeps_revocations(tmp_path):
    certs.init(tmp_path, "127.0.0.1")
    c, _ = certs.issue(tmp_path, "eve")
    serial = certs.load_cert(c).serial_number
    certs.revoke(tmp_path, "eve")
    rev = certs.Revocations(tmp_path, interval=0)
    assert rev.is_revoked(serial)
    os.unlink(tmp_path / "crl.pem")
    assert rev.is_revoked(serial)

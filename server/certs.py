"""Certificates for mutual TLS, in Stenographer's file layout.

    D/ca_cert.pem      CA certificate (0444)          D/ca_key.pem      CA key (0400)
    D/server_cert.pem  server certificate (0444)      D/server_key.pem  server key (0400)
    D/client_cert.pem  the default client (0444)      D/client_key.pem  its key (0440)
    D/NAME_cert.pem    further clients (`issue`)      D/NAME_key.pem    their keys (0440)
    D/crl.pem          CRL signed by the CA (`revoke`); the running server reloads it
                       when its mtime changes and refuses the serials listed in it.

Unlike Stenographer's `stenokeys` (RSA-4096, no SAN, no key usage, 9999 days),
the certificates here are EC P-256 with SANs (the server's IP/DNS name plus
127.0.0.1/::1/localhost), key usage and extended key usage (serverAuth /
clientAuth), a CA with basicConstraints CA:TRUE pathlen 0, and validity of
2 years (CA: 10 years).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stenoxdp.errors import CertError

CA_CERT, CA_KEY = "ca_cert.pem", "ca_key.pem"
SERVER_CERT, SERVER_KEY = "server_cert.pem", "server_key.pem"
CLIENT_CERT, CLIENT_KEY = "client_cert.pem", "client_key.pem"
CRL_FILE = "crl.pem"
CA_DAYS, LEAF_DAYS = 3650, 730
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED = {"ca", "server", "crl"}
ORG = "stenoxdp"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with the final mode from the start (keys never readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} {path} does not exist: create the certificates with "
                        f"`stenoctl certs init --dir {path.parent} --host HOST`") from None
    except PermissionError:
        raise CertError(f"{what} {path} is not readable by this user (uid {os.geteuid()}): "
                        f"run as its owner or fix its permissions") from None
    except OSError as e:
        raise CertError(f"cannot read {what} {path}: {e.strerror}") from None


def load_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    data = _read(Path(path), what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{what} {path} is not a PEM certificate: recreate it with `stenoctl certs init` "
                        f"or `stenoctl certs issue`") from None


def load_key(path: Path, what: str = "private key"):
    data = _read(Path(path), what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertError(f"{what} {path} is not an unencrypted PEM private key: recreate it with "
                        f"`stenoctl certs init` or `stenoctl certs issue`") from None


def _name(cn: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG)]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen = set()
    for h in hosts:
        h = h.strip().strip("[]")
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$", h):
                raise CertError(f"--host {h!r} is neither an IP address nor a DNS name") from None
            out.append(x509.DNSName(h))
    return out


def _leaf(subject: x509.Name, key, ca_cert, ca_key, *, server: bool, sans: list | None = None,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> x509.Certificate:
    nb = not_before or (_now() - dt.timedelta(minutes=5))
    na = not_after or (nb + dt.timedelta(days=LEAF_DAYS))
    b = (x509.CertificateBuilder()
         .subject_name(subject).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False, key_agreement=True,
                                      key_cert_sign=False, crl_sign=False, encipher_only=False,
                                      decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


@dataclass
class CertDir:
    path: Path

    def p(self, name: str) -> Path:
        return self.path / name

    def load_ca(self):
        return load_cert(self.p(CA_CERT), "CA certificate"), load_key(self.p(CA_KEY), "CA key")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or name in _RESERVED:
        raise CertError(f"client name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                        f"(not ca/server/crl)")


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    import grp
    import pwd

    uid = gid = -1
    if owner:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise CertError(f"--owner {owner!r}: no such user (create the service user first)") from None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise CertError(f"--group {group!r}: no such group (create it, e.g. `groupadd {group}`)") from None
    return uid, gid


def init(directory: os.PathLike | str, host: str, *, force: bool = False,
         extra_hosts: list[str] | None = None, owner: str | None = None, group: str | None = None) -> list[Path]:
    """Create the CA, the server certificate (SAN: host + loopback) and the default client.
    Permission model as Stenographer's: ca_key 0400 (creator, i.e. root), server_key 0400
    owned by `owner` (the service user), client_key 0440 with group `group`."""
    uid, gid = _ids(owner, group)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    if (d / CA_KEY).exists() and not force:
        raise CertError(f"{d / CA_KEY} already exists: certificates were initialised already "
                        f"(use `stenoctl certs issue NAME` for more clients, or --force to start over)")
    now = _now() - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"stenoxdp CA {host}", "ca")
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    hosts = [host] + list(extra_hosts or []) + ["127.0.0.1", "::1", "localhost"]
    skey = ec.generate_private_key(ec.SECP256R1())
    scert = _leaf(_name(host, "server"), skey, ca, ca_key, server=True, sans=_sans(hosts))
    ckey = ec.generate_private_key(ec.SECP256R1())
    ccert = _leaf(_name("client", "client"), ckey, ca, ca_key, server=False)
    _write(d / CA_KEY, _key_pem(ca_key), 0o400)
    _write(d / CA_CERT, _cert_pem(ca), 0o444)
    _write(d / SERVER_KEY, _key_pem(skey), 0o400)
    _write(d / SERVER_CERT, _cert_pem(scert), 0o444)
    _write(d / CLIENT_KEY, _key_pem(ckey), 0o440)
    _write(d / CLIENT_CERT, _cert_pem(ccert), 0o444)
    try:
        (d / CRL_FILE).unlink()
    except FileNotFoundError:
        pass
    write_crl(d, [])
    if uid >= 0:
        os.chown(d / SERVER_KEY, uid, -1)
        os.chown(d / SERVER_CERT, uid, -1)
    if gid >= 0:
        os.chown(d / CLIENT_KEY, -1, gid)
    return [d / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY, CRL_FILE)]


def client_paths(directory: os.PathLike | str, name: str = "client") -> tuple[Path, Path]:
    d = Path(directory)
    return d / f"{name}_cert.pem", d / f"{name}_key.pem"


def issue(directory: os.PathLike | str, name: str, *, force: bool = False, group: str | None = None,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> tuple[Path, Path]:
    """Issue a client certificate NAME_cert.pem / NAME_key.pem signed by the CA in directory
    (key 0440, group `group` when given)."""
    _check_name(name)
    _, gid = _ids(None, group)
    d = Path(directory)
    ca, ca_key = CertDir(d).load_ca()
    cpath, kpath = client_paths(d, name)
    if cpath.exists() and not force:
        raise CertError(f"{cpath} already exists: pick another name, or revoke it and use --force")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(_name(name, "client"), key, ca, ca_key, server=False, not_before=not_before, not_after=not_after)
    _write(kpath, _key_pem(key), 0o440)
    _write(cpath, _cert_pem(cert), 0o444)
    if gid >= 0:
        os.chown(kpath, -1, gid)
    return cpath, kpath


def read_crl(directory: os.PathLike | str) -> x509.CertificateRevocationList | None:
    p = Path(directory) / CRL_FILE
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CertError(f"cannot read the CRL {p}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise CertError(f"{p} is not a PEM CRL: rewrite it with `stenoctl certs revoke NAME`") from None


def write_crl(directory: os.PathLike | str, revoked: list[tuple[int, dt.datetime]]) -> Path:
    d = Path(directory)
    ca, ca_key = CertDir(d).load_ca()
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=CA_DAYS)))
    for serial, when in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(when).build())
    crl = b.sign(ca_key, hashes.SHA256())
    _write(d / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), 0o444)
    return d / CRL_FILE


def revoke(directory: os.PathLike | str, name: str) -> int:
    """Add NAME's certificate serial to the CA-signed CRL; returns the serial."""
    d = Path(directory)
    if name in ("ca", "server"):
        raise CertError(f"cannot revoke {name!r}: only client certificates can be revoked")
    cpath, _ = client_paths(d, name)
    if not cpath.exists():
        raise CertError(f"{cpath} does not exist: no client {name!r} was issued in {d} "
                        f"(see `stenoctl certs list --dir {d}`)")
    cert = load_cert(cpath, f"client certificate of {name!r}")
    crl = read_crl(d)
    revoked = [(r.serial_number, r.revocation_date_utc) for r in crl] if crl is not None else []
    if any(s == cert.serial_number for s, _ in revoked):
        return cert.serial_number
    revoked.append((cert.serial_number, _now()))
    write_crl(d, revoked)
    return cert.serial_number


def subject_str(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def list_certs(directory: os.PathLike | str) -> list[dict]:
    """Every *_cert.pem in directory: name, role, subject, serial, validity, revoked."""
    d = Path(directory)
    if not d.is_dir():
        raise CertError(f"certificate directory {d} does not exist: create it with "
                        f"`stenoctl certs init --dir {d} --host HOST`")
    crl = read_crl(d)
    revoked = {r.serial_number for r in crl} if crl is not None else set()
    out = []
    now = _now()
    for p in sorted(d.glob("*_cert.pem")):
        name = p.name[: -len("_cert.pem")]
        try:
            c = x509.load_pem_x509_certificate(p.read_bytes())
        except (OSError, ValueError):
            out.append({"name": name, "role": "?", "subject": "(unreadable)", "serial": "", "not_after": "",
                        "state": "unreadable"})
            continue
        role = "ca" if name == "ca" else "server" if name == "server" else "client"
        state = ("revoked" if c.serial_number in revoked else
                 "expired" if c.not_valid_after_utc < now else
                 "not yet valid" if c.not_valid_before_utc > now else "valid")
        out.append({"name": name, "role": role, "subject": subject_str(c), "serial": f"{c.serial_number:x}",
                    "not_after": c.not_valid_after_utc.strftime("%Y-%m-%d"), "state": state})
    return out


def server_files(directory: os.PathLike | str) -> tuple[bytes, bytes, bytes]:
    """(ca_cert, server_cert, server_key) PEM bytes, validated, with clear errors."""
    d = Path(directory)
    if not d.is_dir():
        raise CertError(f"certificate directory {d} does not exist: create it with "
                        f"`stenoctl certs init --dir {d} --host HOST`")
    ca = load_cert(d / CA_CERT, "CA certificate")
    sc = load_cert(d / SERVER_CERT, "server certificate")
    sk = load_key(d / SERVER_KEY, "server key")
    if sc.public_key().public_numbers() != sk.public_key().public_numbers():
        raise CertError(f"{d / SERVER_KEY} does not match {d / SERVER_CERT}: recreate them with "
                        f"`stenoctl certs init --dir {d} --host HOST --force`")
    if sc.issuer != ca.subject:
        raise CertError(f"{d / SERVER_CERT} was not issued by {d / CA_CERT}: recreate them with "
                        f"`stenoctl certs init --dir {d} --host HOST --force`")
    if sc.not_valid_after_utc < _now():
        raise CertError(f"{d / SERVER_CERT} expired on {sc.not_valid_after_utc:%Y-%m-%d}: recreate it with "
                        f"`stenoctl certs init --dir {d} --host HOST --force`")
    return _cert_pem(ca), _cert_pem(sc), _key_pem(sk)


def client_files(directory: os.PathLike | str, name: str = "client") -> tuple[bytes, bytes, bytes]:
    """(ca_cert, client_cert, client_key) PEM bytes for a client, with clear errors."""
    d = Path(directory)
    cpath, kpath = client_paths(d, name)
    ca = _read(d / CA_CERT, "CA certificate")
    c = _read(cpath, "client certificate")
    k = _read(kpath, "client key")
    load_cert(d / CA_CERT, "CA certificate")
    load_cert(cpath, "client certificate")
    load_key(kpath, "client key")
    return ca, c, k


class Revocations:
    """The CRL of a certificate directory, reloaded when crl.pem's mtime/size
    changes (checked at most every `interval` seconds). Only a CRL whose
    signature verifies against the CA is accepted; a bad CRL keeps the last good
    one and is reported once."""

    def __init__(self, directory: os.PathLike | str, interval: float = 0.5, log=None):
        self.dir = Path(directory)
        self.interval = interval
        self.log = log
        self._lock = threading.Lock()
        self._sig: tuple | None = None
        self._checked = 0.0
        self._serials: frozenset[int] = frozenset()
        self._ca = load_cert(self.dir / CA_CERT, "CA certificate")
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return
        with self._lock:
            self._checked = now
            p = self.dir / CRL_FILE
            try:
                st = p.stat()
                sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                sig = None
            if sig == self._sig and not force:
                return
            if sig is None:
                if self._serials and self.log:
                    self.log.warning("%s disappeared; still refusing the %d serials it listed", p, len(self._serials))
                self._sig = None
                return
            try:
                crl = x509.load_pem_x509_crl(p.read_bytes())
                if not crl.is_signature_valid(self._ca.public_key()):
                    raise ValueError("signature does not verify against ca_cert.pem")
            except (OSError, ValueError) as e:
                if self.log:
                    self.log.warning("ignoring bad CRL %s (%s); keeping the previous one", p, e)
                self._sig = sig
                return
            self._serials = frozenset(r.serial_number for r in crl)
            self._sig = sig

    def is_revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self._serials

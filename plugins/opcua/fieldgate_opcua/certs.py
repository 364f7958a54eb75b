"""Certificates: the gateway's own application certificate (made on first use) and the trust in a server's."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ProtocolError

CERTIFICATE_FILE = "certificate.der"
KEY_FILE = "private-key.pem"
VALID_DAYS = 3650  # an appliance's certificate must not lapse unnoticed after a year; servers pin it anyway
MAX_TRUSTED = 1000  # files read from a trust folder (a folder of a million files must not stall a device)
_making = threading.Lock()  # devices opening together make one certificate, not one each


@dataclass(frozen=True)
class ApplicationCertificate:
    """The gateway's application instance certificate: its files and the application URI it names."""

    certificate: Path
    private_key: Path
    application_uri: str


def application_certificate(folder: Path) -> ApplicationCertificate:
    """The certificate in `folder`, made there when missing, expired or not matching its key (blocking: run it in a
    thread)."""
    cert_file, key_file = folder / CERTIFICATE_FILE, folder / KEY_FILE
    with _making:
        try:
            cert = load_certificate(cert_file)
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            usable = (cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
                      and _public(cert.public_key()) == _public(key.public_key()))
        except (OSError, ValueError, TypeError):
            usable = False
        if not usable:
            cert = _make(folder, cert_file, key_file)
    return ApplicationCertificate(cert_file, key_file, application_uri_of(cert) or default_application_uri())


def _public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def default_application_uri() -> str:
    return f"urn:{socket.gethostname()}:fieldgate"


def application_uri_of(cert: x509.Certificate) -> str | None:
    """The application URI a certificate names (its first URI subject alternative name)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _make(folder: Path, cert_file: Path, key_file: Path) -> x509.Certificate:
    """A self-signed application instance certificate as OPC 10000-6 6.2.2 describes one, and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    hostname = socket.gethostname()
    uri = default_application_uri()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fieldgate@{hostname}"[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldgate")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName(hostname)]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomically(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), mode=0o600)
    _write_atomically(cert_file, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
    return cert


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_certificate(path: Path) -> x509.Certificate:
    """A certificate file, DER or PEM; OSError or ValueError when it cannot be read as one."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def describe(cert: x509.Certificate) -> str:
    """Who a certificate names and its fingerprint, as an operator compares them."""
    subject = cert.subject.rfc4514_string() or "(no subject)"
    return f"{subject} (SHA-256 {fingerprint(cert)})"


def fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 16, 2)) + "…"


def first_certificate(der: bytes) -> x509.Certificate:
    """The server's own certificate from what its endpoint sends (a DER certificate, maybe followed by its chain)."""
    if len(der) < 4 or der[0] != 0x30:
        raise ValueError("not a DER certificate")
    length = der[1]
    if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        size = 2 + count + int.from_bytes(der[2:2 + count], "big")
    else:
        size = 2 + length
    return x509.load_der_x509_certificate(der[:size])


def check_server_certificate(cert: x509.Certificate, *, pinned: Path | None, trusted: Path,
                             rejected: Path | None) -> None:
    """Accept the server's certificate when it is the pinned one, or is (or is issued by) one in the trust folder;
    else raise ProtocolError saying what was offered and where to put it, and keep a copy in `rejected`."""
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise ProtocolError(f"the server's certificate {describe(cert)} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now + datetime.timedelta(minutes=5):
        raise ProtocolError(f"the server's certificate {describe(cert)} is valid only from "
                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    der = cert.public_bytes(serialization.Encoding.DER)
    if pinned is not None:
        try:
            expected = load_certificate(pinned)
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"server_certificate {pinned}: cannot read it as a certificate: {exc}") from exc
        if expected.public_bytes(serialization.Encoding.DER) != der:
            raise ProtocolError(f"the server's certificate {describe(cert)} is not the pinned certificate {pinned} "
                                f"({describe(expected)}): refusing to connect")
        return
    for candidate in _trusted(trusted):
        if candidate.public_bytes(serialization.Encoding.DER) == der or _issued_by(cert, candidate):
            return
    kept = _keep_rejected(cert, rejected) if rejected is not None else None
    hint = f"; to trust it, move {kept} to {trusted}" if kept else f"; to trust it, put it in {trusted}"
    raise ProtocolError(f"the server's certificate {describe(cert)} is not trusted: neither it nor its issuer is in "
                        f"{trusted}{hint} (or pin it with server_certificate)")


def _trusted(folder: Path) -> list[x509.Certificate]:
    try:
        files = sorted(path for path in folder.iterdir() if path.is_file())[:MAX_TRUSTED]
    except OSError:
        return []
    found = []
    for path in files:
        try:
            found.append(load_certificate(path))
        except (OSError, ValueError):
            continue  # a README or a key beside the certificates is no reason to refuse the others
    return found


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca or cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, or ValueError/TypeError for a signature it cannot check
        return False
    return True


def _keep_rejected(cert: x509.Certificate, folder: Path) -> Path | None:
    """A copy of a refused certificate for the operator to move to the trust folder (None if it cannot be kept)."""
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cn[0].value) if cn else "server")[:40]
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]
    path = folder / f"{label}-{digest}.der"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _write_atomically(path, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
    except OSError:
        return None
    return path

"""The gateway's application certificate (made once, kept, made again when it no longer fits its key) and the
trust in a server's: the pinned one, one in the trust folder or issued by one there; any other refused."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fieldgate_opcua import certs

from gateway.errors import ProtocolError


def issue(subject: str, *, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None, ca: bool = False,
          days: int = 30) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(signer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer_key, hashes.SHA256()))
    return cert, key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_the_application_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    made = certs.application_certificate(tmp_path / "opcua")
    first = made.certificate.read_bytes()
    again = certs.application_certificate(tmp_path / "opcua")
    assert again == made and again.certificate.read_bytes() == first
    cert = certs.load_certificate(made.certificate)
    assert certs.application_uri_of(cert) == made.application_uri == certs.default_application_uri()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > datetime.timedelta(days=3000)
    assert made.private_key.stat().st_mode & 0o777 == 0o600

    made.private_key.write_bytes(issue("other")[1].private_bytes(  # a key that is not the certificate's
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    remade = certs.application_certificate(tmp_path / "opcua")
    assert remade.certificate.read_bytes() != first
    key = serialization.load_pem_private_key(remade.private_key.read_bytes(), password=None)
    assert certs.load_certificate(remade.certificate).public_key().public_numbers() == \
        key.public_key().public_numbers()  # type: ignore[union-attr]


def test_a_server_certificate_is_trusted_by_pin_folder_or_issuer(tmp_path: Path) -> None:
    ca = issue("plant CA", ca=True)
    server, _ = issue("plc-1", issuer=ca)
    stranger, _ = issue("plc-1")  # the same name, another key: what a man in the middle would offer
    trusted, rejected = tmp_path / "trusted", tmp_path / "rejected"
    trusted.mkdir()
    (trusted / "README").write_text("put certificates here")  # not a certificate: ignored

    with pytest.raises(ProtocolError, match="is not trusted: neither it nor its issuer is in"):
        certs.check_server_certificate(server, pinned=None, trusted=trusted, rejected=rejected)
    (kept,) = rejected.iterdir()
    assert kept.read_bytes() == der(server) and kept.name.startswith("plc-1-")

    (trusted / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    certs.check_server_certificate(server, pinned=None, trusted=trusted, rejected=rejected)
    with pytest.raises(ProtocolError, match="is not trusted"):
        certs.check_server_certificate(stranger, pinned=None, trusted=trusted, rejected=None)

    pinned = tmp_path / "plc-1.der"
    pinned.write_bytes(der(server))
    certs.check_server_certificate(server, pinned=pinned, trusted=trusted, rejected=None)
    with pytest.raises(ProtocolError, match=r"is not the pinned certificate .*plc-1.der .*: refusing to connect"):
        certs.check_server_certificate(stranger, pinned=pinned, trusted=trusted, rejected=None)
    with pytest.raises(ProtocolError, match=r"server_certificate .*missing\.der: cannot read it as a certificate"):
        certs.check_server_certificate(server, pinned=tmp_path / "missing.der", trusted=trusted, rejected=None)

    expired, _ = issue("old", days=-1)
    with pytest.raises(ProtocolError, match="expired on"):
        certs.check_server_certificate(expired, pinned=None, trusted=trusted, rejected=None)


def test_the_server_certificate_is_taken_from_its_chain() -> None:
    first, _ = issue("plc-1")
    second, _ = issue("plant CA", ca=True)
    assert certs.first_certificate(der(first) + der(second)) == first
    with pytest.raises(ValueError):
        certs.first_certificate(b"")
    with pytest.raises(ValueError):
        certs.first_certificate(b"\x30\x82\xff\xff garbage")

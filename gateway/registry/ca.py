"""The registry's certificate authority: its own CA, its server certificate, node certificates from CSRs (keys and
fingerprints with gateway.pki, which nodes use too)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError
from gateway.pki import fingerprint, key_pem, new_key, subject_name, write_private

CA_DAYS = 3650
SERVER_DAYS = 825
NODE_DAYS = 825
REPLICA_UNIT = "registry replica"  # the organisational unit of the replicas' relay certificates


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class CertificateAuthority:
    """The CA kept in the registry's data dir (ca.pem, ca.key)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    directory: Path

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    @classmethod
    def load_or_create(cls, directory: Path, common_name: str = "fieldgate registry CA") -> CertificateAuthority:
        """The CA of this data dir, made on first use."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"{key_path}: not an EC private key")
            return cls(cert, key, directory)
        key = new_key()
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(subject_name(common_name)).issuer_name(subject_name(common_name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, directory)

    def _issue(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, days: float,
               *usages: x509.ObjectIdentifier) -> x509.CertificateBuilder:
        now = _now()
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False))

    def write_server_certificate(self, host: str) -> tuple[Path, Path]:
        """A fresh server certificate for `host` (plus localhost and this machine's name); same CA every time."""
        key = new_key()
        names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname()),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.IPAddress(ipaddress.ip_address("::1"))]
        if host not in ("", "0.0.0.0", "::", "localhost", "127.0.0.1", "::1"):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (self._issue(subject_name(host or "localhost"), key.public_key(), SERVER_DAYS,
                            ExtendedKeyUsageOID.SERVER_AUTH)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.directory / "server.pem", self.directory / "server.key"
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def write_replica_certificate(self) -> tuple[Path, Path]:
        """A fresh certificate for the relay between registry replicas (gateway.registry.peers): client and server,
        its subject marked REPLICA_UNIT, which no node or batch certificate carries (their subject is
        subject_name(...)). Every replica makes its own from the CA they share."""
        key = new_key()
        subject = x509.Name([*subject_name("registry replica"),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, REPLICA_UNIT)])
        cert = (self._issue(subject, key.public_key(), SERVER_DAYS, ExtendedKeyUsageOID.CLIENT_AUTH,
                            ExtendedKeyUsageOID.SERVER_AUTH)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.directory / "replica.pem", self.directory / "replica.key"
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def sign_node(self, csr_pem: str, node: str) -> x509.Certificate:
        """A certificate for `node` from its CSR (the CSR's subject is replaced by the node name): a client to the
        registry, and client and server of the direct streams between the fleet's nodes (gateway.services.mesh)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise ConfigError(f"csr: not a PEM certificate request: {exc}") from None
        try:
            public_key = csr.public_key()
            valid = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as exc:  # a key or signature algorithm this CA does not know
            raise ConfigError(f"csr: expected a self-signed EC key request: {exc}") from None
        if not valid or not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ConfigError("csr: expected a self-signed EC key request")
        return self._issue(subject_name(node), public_key, NODE_DAYS, ExtendedKeyUsageOID.CLIENT_AUTH,
                           ExtendedKeyUsageOID.SERVER_AUTH).sign(self.key, hashes.SHA256())

    def issue_batch(self, common_name: str, days: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A client certificate and its new key for a batch bundle (its nodes authenticate with it to join)."""
        key = new_key()
        cert = self._issue(subject_name(common_name), key.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(
            self.key, hashes.SHA256())
        return cert, key


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def peer_identity(cert_pem_text: str) -> tuple[str, str]:
    """(common name, serial as hex) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem_text.encode())
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = common_names[0].value if common_names else ""
    return (name if isinstance(name, str) else name.decode()), format(cert.serial_number, "x")


def is_replica(cert_der: bytes) -> bool:
    """Whether a certificate (DER, already verified against the CA) is a registry replica's relay certificate."""
    cert = x509.load_der_x509_certificate(cert_der)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return any(unit.value == REPLICA_UNIT for unit in units)

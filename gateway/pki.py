"""Keys, certificate requests and fingerprints that both sides of the wire use: the node for its own key and CSR
and to check the registry's CA against its join token, the registry's CA (gateway.registry.ca) for its keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.durable import write_durable

ORGANIZATION = "fieldgate registry"


def subject_name(common_name: str) -> x509.Name:
    """The subject (or issuer) of every certificate the fleet uses: the registry's organisation and a common name."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (keys), durably (write_durable)."""
    write_durable(path, data, 0o600)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, lowercase hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_csr(key: ec.EllipticCurvePrivateKey) -> str:
    """A certificate request for a node's key (the registry picks the name)."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject_name("fieldgate node")).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()

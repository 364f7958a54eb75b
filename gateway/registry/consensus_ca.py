"""The certificates of a group's etcd (offline failover, gateway.registry.offline): every group with a consensus store
has a CA of its own, kept in the registry's data dir (`consensus/<group hash>/ca.pem`, `ca.key`), that signs one
certificate per member, with the hosts of the member's peer and client URLs as names, for server and client auth.

The group's etcd members trust that CA only (`--trusted-ca-file`, `--peer-trusted-ca-file` with client certificate
auth), so only the members of that group reach its store: not the nodes of other groups (whose node certificates the
registry CA signs), not anybody else on the plant network. A member's certificate lasts MEMBER_DAYS and is issued
again RENEW_DAYS before it ends, or at once when the member reports other URLs; it goes to that member only, inside
its plan, over its mutual-TLS uplink. Neither certificates nor keys are logged."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.pki import key_pem, new_key, subject_name, write_private
from gateway.registry.ca import CertificateAuthority
from gateway.wire import MemberTls

log = logging.getLogger(__name__)
MEMBER_DAYS = 90
RENEW_DAYS = 30  # a member's certificate is issued again when it has less than this left
_lock = threading.Lock()  # one issuer at a time in this process (a group's CA is made once)


def _hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def url_hosts(*urls: str) -> list[str]:
    """The hosts of the URLs (IPs without brackets), each once, in order."""
    hosts: list[str] = []
    for url in urls:
        host = urlsplit(url).hostname or ""
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _current(cert: x509.Certificate, ca: CertificateAuthority, names: list[x509.GeneralName],
             now: datetime.datetime) -> bool:
    """Whether a member's certificate is still the one to use: by this CA, for these names, not near its end."""
    try:
        cert.verify_directly_issued_by(ca.cert)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(have) == set(names) and cert.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS)


def group_ca(data_dir: Path, group: str) -> CertificateAuthority:
    directory = data_dir / "consensus" / _hash(group)
    return CertificateAuthority.load_or_create(directory, f"fieldgate consensus CA {group[:40]}")


def member_tls(data_dir: Path, group: str, node: str, peer_url: str, client_url: str,
               now: datetime.datetime | None = None) -> MemberTls:
    """The certificate of `node`'s etcd member in `group` (issued when missing, for other URLs, or near its end)."""
    now = now or datetime.datetime.now(datetime.UTC)
    with _lock:
        ca = group_ca(data_dir, group)
        names = _names(url_hosts(peer_url, client_url))
        cert_path, key_path = ca.directory / f"{_hash(node)}.pem", ca.directory / f"{_hash(node)}.key"
        cert: x509.Certificate | None = None
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            stored = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not _current(cert, ca, names, now) or not isinstance(stored, ec.EllipticCurvePrivateKey) \
                    or stored.public_key() != cert.public_key():
                cert = None
        if cert is None:
            key = new_key()
            cert = (x509.CertificateBuilder().subject_name(subject_name(node)).issuer_name(ca.cert.subject)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=MEMBER_DAYS))
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                                 content_commitment=False, data_encipherment=False,
                                                 key_agreement=True, key_cert_sign=False, crl_sign=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                          ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                    .add_extension(x509.SubjectAlternativeName(names), critical=False)
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                                   critical=False)
                    .sign(ca.key, hashes.SHA256()))
            temporary = key_path.with_suffix(".key.tmp")
            write_private(temporary, key_pem(key))
            os.replace(temporary, key_path)
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            log.info("etcd certificate issued for node %s of group %s, until %s", node, group,
                     cert.not_valid_after_utc.date().isoformat())
        return MemberTls(ca=ca.cert_pem.decode(), cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
                         key=key_path.read_text())

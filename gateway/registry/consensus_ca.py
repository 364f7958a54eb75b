"""The certificates of a group's etcd (offline failover, gateway.registry.offline): every group with a consensus store
has a CA of its own that signs one certificate per member, with the hosts of the member's peer and client URLs as
names, for server and client auth.

The group's etcd members trust that CA only (`--trusted-ca-file`, `--peer-trusted-ca-file` with client certificate
auth), so only the members of that group reach its store: not the nodes of other groups (whose node certificates the
registry CA signs), not anybody else on the plant network.

Nothing is stored: the group's CA key and each member's key are derived (HKDF) from the registry CA's key, and the
certificates are signed deterministically (RFC 6979) over fixed fields, so every registry replica (replicas share
the CA's `ca.pem`/`ca.key`) hands a member byte-identical material and its plan's version does not change with the
replica that answers. A member's certificate belongs to a period of two thirds of its lifetime (MEMBER_DAYS, or
`registry serve --consensus-certificate-lifetime`) and lasts the whole lifetime, so the one in use always has a
third of it left; each member's periods start at a time of its own (from a hash of group and node), so a group's
members do not restart their etcd members together; the next period, or other URLs reported by the member, give a
new key and certificate, which the member gets inside its plan, over its mutual-TLS uplink. Neither certificates nor
keys are logged."""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import logging
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.pki import key_pem, subject_name
from gateway.registry.ca import CertificateAuthority
from gateway.wire import MemberTls

log = logging.getLogger(__name__)
MEMBER_DAYS = 90.0  # a member certificate's lifetime; a new one comes every two thirds of it
_settings = {"member_days": MEMBER_DAYS}
_CURVE_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)  # of SECP256R1


def set_member_days(days: float) -> None:
    """The lifetime of the member certificates this registry hands out (`--consensus-certificate-lifetime`)."""
    if not 10 / 86400 <= days <= 3650:
        raise ValueError(f"{days * 86400:g} s: a member certificate lasts from 10 s to 3650 days")
    _settings["member_days"] = float(days)


def _derived_key(root: ec.EllipticCurvePrivateKey, *parts: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key derived from `root`'s secret and the parts: the same inputs give the same key anywhere."""
    secret = root.private_numbers().private_value.to_bytes(66, "big")
    info = "\0".join(("fieldgate consensus v1", *parts)).encode()
    material = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=info).derive(secret)
    return ec.derive_private_key(int.from_bytes(material, "big") % (_CURVE_ORDER - 1) + 1, ec.SECP256R1())


def _serial(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:19], "big") | 1


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


@functools.lru_cache(maxsize=256)
def group_ca(data_dir: Path, group: str) -> CertificateAuthority:
    """The group's CA: its key derived from the registry CA's, its certificate as long-lived as the registry's."""
    root = CertificateAuthority.load_or_create(data_dir)
    key = _derived_key(root.key, "group CA", group)
    name = subject_name(f"fieldgate consensus CA {group[:40]}")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(_serial("group CA", group, root.cert_pem.decode()))
            .not_valid_before(root.cert.not_valid_before_utc).not_valid_after(root.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256(), ecdsa_deterministic=True))
    return CertificateAuthority(cert, key, data_dir)


def member_tls(data_dir: Path, group: str, node: str, peer_url: str, client_url: str,
               now: datetime.datetime | None = None) -> MemberTls:
    """The certificate of `node`'s etcd member in `group` for the current period and these URLs."""
    now = now or datetime.datetime.now(datetime.UTC)
    days = _settings["member_days"]
    period = days * 86400 * 2 / 3
    # each member's periods start at a time of its own, so the members of a group never all restart their etcd
    # members at once for new certificates (the group would lose its majority, and stop its guarded apps, for that)
    offset = _serial("offset", group, node) % max(int(period), 1)
    index = int((now.timestamp() + offset) // period)
    return _member_tls(data_dir, group, node, peer_url, client_url, days, index, index * period - offset)


@functools.lru_cache(maxsize=1024)
def _member_tls(data_dir: Path, group: str, node: str, peer_url: str, client_url: str, days: float, index: int,
                started: float) -> MemberTls:
    start = datetime.datetime.fromtimestamp(started, datetime.UTC)
    ca = group_ca(data_dir, group)
    hosts = url_hosts(peer_url, client_url)
    key = _derived_key(ca.key, "member", group, node, str(days), str(index), *hosts)
    cert = (x509.CertificateBuilder().subject_name(subject_name(node)).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(_serial("member", group, node, str(days), str(index), *hosts))
            .not_valid_before(start - datetime.timedelta(minutes=5))
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256(), ecdsa_deterministic=True))
    return MemberTls(ca=ca.cert_pem.decode(), cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
                     key=key_pem(key).decode())

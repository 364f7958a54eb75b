"""Batch bundles: bulk provisioning without a token per node.

`fieldgate registry batch create NAME -o bundle.tar.gz` records a batch (how many nodes may join with it, until
when, the labels and name prefix they get) and writes a bundle: a batch certificate and key signed by the registry
CA (common name `batch:NAME`), the CA certificate, the registry URL(s) and the labels. Every node of the batch runs
`fieldgate join --bundle bundle.tar.gz`: it authenticates with the batch certificate (mutual TLS) at
`POST /api/v1/join/batch`, sends a CSR for its own key and gets its own name (`<prefix>-<serial or hostname>`) and
node certificate. A revoked, expired or used-up batch is refused with that reason.
"""

from __future__ import annotations

import io
import json
import re
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from litestar import post
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import JSONBody

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.pki import key_pem
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.ca import CertificateAuthority, cert_pem, peer_identity
from gateway.registry.store import RegistryStore
from gateway.resources.schema import NAME_PATTERN
from gateway.wire import BatchJoinRequest, BatchJoinResponse, BundleInfo

CN_PREFIX = "batch:"  # a node name cannot contain ':', so a batch certificate is never taken for a node's
GRACE_DAYS = 30  # the certificate outlives the batch so that a late node hears `expired`, not a TLS failure
URLS_FILE = "urls.json"


class BatchRefused(AuthError):
    """A batch that cannot take another node; the message is the reason (`revoked`, `expired`, `used up`)."""



def record_urls(data_dir: Path, listen: str) -> None:
    """Remember the URL `registry serve` listens on, for bundles made without --url."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / URLS_FILE).write_text(json.dumps([f"https://{host}:{port}"]))


def known_urls(data_dir: Path) -> list[str]:
    path = data_dir / URLS_FILE
    if not path.exists():
        return []
    try:
        return [str(url) for url in json.loads(path.read_text())]
    except (ValueError, TypeError):
        return []


async def create_batch(store: RegistryStore, ca: CertificateAuthority, name: str, *, count: int, ttl: float,
                       labels: dict[str, str], prefix: str | None, urls: list[str], workspace: str = "default"
                       ) -> bytes:
    """Record a batch and return its bundle (tar.gz bytes)."""
    prefix = prefix or name
    for what, value in (("batch name", name), ("--prefix", prefix)):
        if not re.fullmatch(NAME_PATTERN, value) or len(value) > 200:
            raise ConfigError(f"{what} {value!r}: expected lowercase letters, digits, '-' and '.'")
    if count < 1:
        raise ConfigError("--count: expected 1 or more")
    if ttl <= 0:
        raise ConfigError("--ttl: expected a positive duration")
    for url in urls:
        if not url.startswith("https://"):
            raise ConfigError(f"--url {url}: expected an https:// URL")
    if await store.batches.exists(name):
        raise ConfigError(f"batch {name} exists already")
    cert, key = ca.issue_batch(CN_PREFIX + name, ttl / 86400 + GRACE_DAYS)
    now = time.time()
    await store.batches.add(name, format(cert.serial_number, "x"), prefix, count, labels, now + ttl, now, workspace)
    info = BundleInfo(batch=name, registry=[u.rstrip("/") for u in urls], labels=labels, expires_at=now + ttl,
                      ca_fingerprint=ca.fingerprint)
    return _tar({"bundle.json": msgspec.json.format(msgspec.json.encode(info)), "ca.pem": ca.cert_pem,
                 "batch.pem": cert_pem(cert).encode(), "batch.key": key_pem(key)})


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), 0o600, int(time.time())
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


async def list_batches(store: RegistryStore) -> list[dict[str, Any]]:
    now = time.time()
    result = []
    for name, prefix, max_count, used, revoked, labels, expires_at, created_at, workspace in (
            await store.batches.listing()):
        status = "revoked" if revoked else "expired" if expires_at < now else "used up" if used >= max_count \
            else "active"
        result.append({"name": name, "status": status, "prefix": prefix, "count": max_count, "used": used,
                       "labels": labels, "expires_at": expires_at, "created_at": created_at,
                       "workspace": workspace})
    return result


async def revoke_batch(store: RegistryStore, name: str) -> None:
    """No node joins with the batch from now on (nodes that joined keep their own certificates)."""
    if not await store.batches.revoke(name):
        raise NotFound(f"no batch {name}")


async def _check_batch(store: RegistryStore, name: str, serial: str) -> tuple[dict[str, str], str, str]:
    """(labels, prefix, workspace) of a batch that may take a node; BatchRefused with the reason otherwise."""
    row = await store.batches.get(name)
    if row is None or row[0] != serial:
        raise BatchRefused("unknown")
    _, prefix, max_count, used, revoked, labels, expires_at, workspace = row
    if revoked:
        raise BatchRefused("revoked")
    if expires_at < time.time():
        raise BatchRefused("expired")
    if used >= max_count:
        raise BatchRefused("used up")
    return dict(labels), str(prefix), str(workspace)


async def _take_one(store: RegistryStore, name: str) -> int:
    """Count one node against the batch; its number (1…count)."""
    number = await store.batches.take_one(name)
    if number is None:
        raise BatchRefused("used up")
    return number


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:40].strip("-")


def node_name(prefix: str, hint: str, number: int, taken: set[str]) -> str:
    """`<prefix>-<hint>` (the node's serial or hostname), `-2`, `-3`… when taken; `<prefix>-<number>` without one."""
    slug = _slug(hint)
    base = f"{prefix}-{slug}" if slug else f"{prefix}-{number}"
    if base not in taken:
        return base
    return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)


@post("/api/v1/join/batch", summary="Join with a batch certificate (mutual TLS) and a CSR; returns the node name "
      "and its certificate", status_code=200)
async def join_batch(request: AnyRequest, data: JSONBody[BatchJoinRequest]) -> BatchJoinResponse:
    extensions: dict[str, Any] = dict(request.scope.get("extensions") or {})
    chain: list[str] = (extensions.get("tls") or {}).get("client_cert_chain") or []
    if not chain:
        raise NotAuthorizedException("a batch certificate from the registry CA is required")
    common_name, serial = peer_identity(chain[0])
    if not common_name.startswith(CN_PREFIX):
        raise PermissionDeniedException("not a batch certificate")
    batch = common_name.removeprefix(CN_PREFIX)
    ca: CertificateAuthority = request.app.state.ca
    store = store_of(request)
    workspace_of_batch = await store.batches.workspace(batch)
    scope = access.workspace_scope(workspace_of_batch) if workspace_of_batch is not None else access.PLATFORM
    async with access.audited(store, f"batch:{batch}", "node.join", f"batch/{batch}", scope) as entry:
        try:
            labels, prefix, workspace = await _check_batch(store, batch, serial)
            x509.load_pem_x509_csr(data.csr.encode())  # a bad request does not use up a place
            group = await store.group_for_labels(labels, workspace)
            number = await _take_one(store, batch)
        except BatchRefused as exc:
            raise PermissionDeniedException(str(exc)) from None
        except ValueError as exc:
            raise ConfigError(f"csr: not a PEM certificate request: {exc}") from None
        except ConfigError as exc:  # the labels match several groups
            raise HTTPException(status_code=409, detail=str(exc)) from None
        name = node_name(prefix, data.hint, number, await store.node_names())
        entry.detail = {"node": name, "hint": data.hint[:100]}
        cert = ca.sign_node(data.csr, name)
        interval = float(request.app.state.interval)
        try:
            await store.add_node(name, format(cert.serial_number, "x"), labels, interval, group, workspace)
        except Exception as exc:  # another node took the name in the meantime
            raise HTTPException(status_code=409, detail=f"node name {name} is taken; join again") from exc
        await store.batches.mark_node(name, batch)
    return BatchJoinResponse(node=name, certificate=cert_pem(cert), ca=ca.cert_pem.decode(),
                             heartbeat_interval=interval, batch=batch)


ROUTE_HANDLERS = [join_batch]

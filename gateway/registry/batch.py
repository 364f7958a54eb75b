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
from litestar import post
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import JSONBody

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.pki import key_pem
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.ca import CertificateAuthority, cert_pem, peer_identity
from gateway.registry.store import NameTaken, RegistryStore
from gateway.resources.schema import NAME_PATTERN, NODE_NAME_MAX, check_node_name
from gateway.wire import BatchJoinRequest, BatchJoinResponse, BundleInfo

CN_PREFIX = "batch:"  # a node name cannot contain ':', so a batch certificate is never taken for a node's
BATCH_NAME_MAX = 64 - len(CN_PREFIX)  # the certificate's common name holds at most 64 characters (RFC 5280)
PREFIX_MAX = 48  # leaves a node name (at most NODE_NAME_MAX) room for `-<serial>` and a `-2` when that is taken
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
    for what, value, longest in (("batch name", name, BATCH_NAME_MAX),
                                 ("--prefix" if prefix else "--prefix (the batch name)", prefix or name, PREFIX_MAX)):
        if not re.fullmatch(NAME_PATTERN, value):
            raise ConfigError(f"{what} {value!r}: expected lowercase letters, digits, '-' and '.', starting and "
                              "ending with a letter or digit, no two symbols in a row")
        if len(value) > longest:
            raise ConfigError(f"{what} {value!r}: expected at most {longest} characters")
    prefix = prefix or name
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


async def _check_batch(store: RegistryStore, name: str, serial: str) -> tuple[dict[str, str], str, str, int]:
    """(labels, prefix, workspace, places taken) of a batch that may take a node; BatchRefused with the reason
    otherwise."""
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
    return dict(labels), str(prefix), str(workspace), int(used)


async def take_place(store: RegistryStore, batch: str, name: str, serial: str, labels: dict[str, str],
                     interval: float, group: str | None, workspace: str) -> None:
    """Count one node against the batch and record it in one transaction: a node refused on the way takes no place.
    BatchRefused when another node took the last place meanwhile, NameTaken when one took the name."""
    if not await store.join_batch_node(batch, name, serial, labels, interval, group, workspace):
        raise BatchRefused("used up")


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def node_name(prefix: str, hint: str, number: int, taken: set[str]) -> str:
    """`<prefix>-<hint>` (the node's serial or hostname), `-2`, `-3`… when taken; `<prefix>-<number>` without one.

    The hint is cut so that the name, suffix included, keeps within NODE_NAME_MAX characters."""
    slug = _slug(hint[:200]) or str(number)
    for n in range(1, len(taken) + 2):
        suffix = f"-{n}" if n > 1 else ""
        name = f"{prefix}-{slug[:NODE_NAME_MAX - len(prefix) - 1 - len(suffix)].strip('-')}{suffix}"
        if name not in taken:
            return name
    raise AssertionError("unreachable: one of len(taken) + 1 names is free")


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
        # everything is checked first; the place is taken in the transaction that records the node
        try:
            labels, prefix, workspace, used = await _check_batch(store, batch, serial)
        except BatchRefused as exc:
            raise PermissionDeniedException(str(exc)) from None
        name = node_name(prefix, data.hint, used + 1, await store.node_names())
        entry.detail = {"node": name, "hint": data.hint[:100]}
        check_node_name(name)  # a batch made before names were limited may have too long a prefix
        cert = ca.sign_node(data.csr, name)
        try:
            group = await store.group_for_labels(labels, workspace)
        except ConfigError as exc:  # the labels match several groups
            raise HTTPException(status_code=409, detail=str(exc)) from None
        interval = float(request.app.state.interval)
        try:
            await take_place(store, batch, name, format(cert.serial_number, "x"), labels, interval, group, workspace)
        except BatchRefused as exc:
            raise PermissionDeniedException(str(exc)) from None
        except NameTaken as exc:  # another node took the name meanwhile
            raise HTTPException(status_code=409, detail=f"{exc}; join again") from None
    return BatchJoinResponse(node=name, certificate=cert_pem(cert), ca=ca.cert_pem.decode(),
                             heartbeat_interval=interval, batch=batch, channel=request.app.state.channel_address)


ROUTE_HANDLERS = [join_batch]

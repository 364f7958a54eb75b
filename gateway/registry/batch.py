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
import ssl
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from cryptography import x509
from litestar import post
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import JSONBody

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.pki import key_pem, make_csr, new_key, write_private
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.ca import CertificateAuthority, cert_pem, peer_identity
from gateway.registry.store import RegistryStore
from gateway.resources.schema import NAME_PATTERN
from gateway.uplink.join import RegistrySettings, detail, join_answer, registry_dir, save_identity
from gateway.wire import BatchJoinRequest, BatchJoinResponse, BundleInfo

CN_PREFIX = "batch:"  # a node name cannot contain ':', so a batch certificate is never taken for a node's
GRACE_DAYS = 30  # the certificate outlives the batch so that a late node hears `expired`, not a TLS failure
URLS_FILE = "urls.json"
TIMEOUT = 10.0
_NO_SERIAL = {"", "0", "none", "not specified", "to be filled by o.e.m.", "default string", "system serial number",
              "not applicable", "n/a", "unknown", "123456789"}


class BatchRefused(AuthError):
    """A batch that cannot take another node; the message is the reason (`revoked`, `expired`, `used up`)."""


# --- the registry side --------------------------------------------------------------------------------------------


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
    if await store.database.rows("SELECT 1 FROM batches WHERE name=?", name):
        raise ConfigError(f"batch {name} exists already")
    cert, key = ca.issue_batch(CN_PREFIX + name, ttl / 86400 + GRACE_DAYS)
    now = time.time()
    await store.database.write(
        "INSERT INTO batches (name, serial, prefix, max_count, labels, expires_at, created_at, workspace) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", name, format(cert.serial_number, "x"), prefix, count, json.dumps(labels),
        now + ttl, now, workspace)
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
    for name, prefix, max_count, used, revoked, labels, expires_at, created_at, workspace in await store.database.rows(
            "SELECT name, prefix, max_count, used, revoked, labels, expires_at, created_at, workspace FROM batches "
            "ORDER BY name"):
        status = "revoked" if revoked else "expired" if expires_at < now else "used up" if used >= max_count \
            else "active"
        result.append({"name": name, "status": status, "prefix": prefix, "count": max_count, "used": used,
                       "labels": json.loads(labels), "expires_at": expires_at, "created_at": created_at,
                       "workspace": workspace})
    return result


async def revoke_batch(store: RegistryStore, name: str) -> None:
    """No node joins with the batch from now on (nodes that joined keep their own certificates)."""
    if not await store.database.write("UPDATE batches SET revoked=1 WHERE name=?", name):
        raise NotFound(f"no batch {name}")


async def _check_batch(store: RegistryStore, name: str, serial: str) -> tuple[dict[str, str], str, str]:
    """(labels, prefix, workspace) of a batch that may take a node; BatchRefused with the reason otherwise."""
    rows = await store.database.rows("SELECT serial, prefix, max_count, used, revoked, labels, expires_at, workspace "
                                     "FROM batches WHERE name=?", name)
    if not rows or rows[0][0] != serial:
        raise BatchRefused("unknown")
    _, prefix, max_count, used, revoked, labels, expires_at, workspace = rows[0]
    if revoked:
        raise BatchRefused("revoked")
    if expires_at < time.time():
        raise BatchRefused("expired")
    if used >= max_count:
        raise BatchRefused("used up")
    return dict(json.loads(labels)), str(prefix), str(workspace)


async def _take_one(store: RegistryStore, name: str) -> int:
    """Count one node against the batch; its number (1…count)."""
    # the WHERE clause keeps two nodes at once from both taking the last place
    [taken] = await store.database.transaction([(
        "UPDATE batches SET used=used+1 WHERE name=? AND used < max_count AND revoked=0 RETURNING used", (name,))])
    if not taken:
        raise BatchRefused("used up")
    return int(taken[0][0])


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
    rows = await store.database.rows("SELECT workspace FROM batches WHERE name=?", batch)
    scope = access.workspace_scope(rows[0][0]) if rows else access.PLATFORM
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
        await store.database.write("UPDATE nodes SET batch=? WHERE name=?", batch, name)
    return BatchJoinResponse(node=name, certificate=cert_pem(cert), ca=ca.cert_pem.decode(),
                             heartbeat_interval=interval, batch=batch)


ROUTE_HANDLERS = [join_batch]


# --- the node side ------------------------------------------------------------------------------------------------


def read_bundle(path: Path) -> tuple[BundleInfo, dict[str, bytes]]:
    """The bundle's info and its files (ca.pem, batch.pem, batch.key); ConfigError names what is wrong."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            files = {}
            for name in ("bundle.json", "ca.pem", "batch.pem", "batch.key"):
                member = tar.extractfile(name)
                if member is None:
                    raise KeyError(name)
                files[name] = member.read()
        info = msgspec.json.decode(files["bundle.json"], type=BundleInfo)
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"--bundle {path}: not a batch bundle: {exc}") from None
    except KeyError as exc:
        raise ConfigError(f"--bundle {path}: not a batch bundle: {exc.args[0]} is missing") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"--bundle {path}: bundle.json: {exc}") from None
    return info, files


def machine_hint() -> str:
    """This machine's serial number when it has a real one, else its hostname."""
    for path in ("/sys/class/dmi/id/product_serial", "/proc/device-tree/serial-number"):
        try:
            serial = Path(path).read_text(errors="replace").strip("\x00 \n")
        except OSError:
            continue
        if serial.lower() not in _NO_SERIAL and _slug(serial):
            return serial
    return socket.gethostname()


async def join_with_bundle(url: str | None, bundle: Path, data_dir: Path, *, name: str | None = None
                           ) -> RegistrySettings:
    """Join with a batch bundle (at `url`, else the bundle's URLs in turn); AuthError `batch refused: <reason>`."""
    if (registry_dir(data_dir) / "registry.json").exists():
        raise ConfigError(f"{registry_dir(data_dir)}: this node has joined a registry already; remove that "
                          "directory to join again")
    info, files = read_bundle(bundle)
    urls = [url.rstrip("/")] if url else info.registry
    if not urls:
        raise ConfigError(f"--bundle {bundle}: the bundle names no registry URL; give --registry")
    for candidate in urls:
        if not candidate.startswith("https://"):
            raise ConfigError(f"--registry {candidate}: expected an https:// URL")
    if info.expires_at < time.time():
        raise BatchRefused("batch refused: expired")
    key = new_key()
    request = msgspec.json.encode(BatchJoinRequest(csr=make_csr(key), hint=name or machine_hint()))
    with tempfile.TemporaryDirectory(prefix="fieldgate-bundle-") as directory:
        cert_path, key_path = Path(directory) / "batch.pem", Path(directory) / "batch.key"
        cert_path.write_bytes(files["batch.pem"])
        write_private(key_path, files["batch.key"])
        try:
            context = ssl.create_default_context(cadata=files["ca.pem"].decode())
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"--bundle {bundle}: unusable certificate or key: {exc}") from None
        failures = []
        for candidate in urls:
            try:
                async with httpx.AsyncClient(verify=context, timeout=TIMEOUT) as client:
                    response = await client.post(f"{candidate}/api/v1/join/batch", content=request,
                                                 headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                failures.append(f"{candidate}: {exc}")
                continue
            if response.status_code == 403:
                raise BatchRefused(f"batch refused: {detail(response)}")
            if response.status_code != 200:
                raise ConfigError(f"{candidate}: join failed ({response.status_code}): {detail(response)}")
            return save_identity(data_dir, candidate, files["ca.pem"], key, join_answer(candidate, response))
    raise ConfigError(f"cannot reach the registry: {'; '.join(failures)}")

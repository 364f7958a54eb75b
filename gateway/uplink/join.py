"""The node side of joining: with a join token (check the registry against the token's CA fingerprint, send a CSR) or
with a batch bundle (authenticate with its batch certificate, send a CSR and a hint for the name); keep the
certificate in <data-dir>/registry/ (ca.pem, node.pem, node.key, registry.json)."""

from __future__ import annotations

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
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.durable import write_durable
from gateway.errors import AuthError, ConfigError
from gateway.pki import fingerprint, key_pem, make_csr, new_key, write_private
from gateway.resources.schema import check_node_name
from gateway.wire import BatchJoinRequest, BundleInfo, JoinRequest, JoinResponse

TIMEOUT = 10.0
_NO_SERIAL = {"", "0", "none", "not specified", "to be filled by o.e.m.", "default string", "system serial number",
              "not applicable", "n/a", "unknown", "123456789"}


class RegistrySettings(msgspec.Struct, kw_only=True):
    """registry.json: where the registry is and who this node is to it."""

    url: str
    node: str
    heartbeat_interval: float = 10.0
    channel: str = ""  # where the registry said its channel is ("[:PORT]PATH", "off"); "": its default path
    channel_url: str = ""  # a wss:// URL that overrides it (a channel behind another name or port)
    channel_retry: float = 60.0  # seconds between tries of the channel while on HTTPS polling after a refusal


def registry_dir(data_dir: Path) -> Path:
    return data_dir / "registry"


def load_settings(data_dir: Path) -> RegistrySettings | None:
    """The node's registry settings, or None when it has not joined."""
    path = registry_dir(data_dir) / "registry.json"
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=RegistrySettings)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def client_ssl_context(data_dir: Path) -> ssl.SSLContext:
    """Mutual TLS: trust only the registry CA, present the node certificate."""
    directory = registry_dir(data_dir)
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    return context


def expired_certificate(data_dir: Path) -> str:
    """Why the node certificate cannot authenticate any more ("" while it is valid or cannot be read): the registry
    ends the TLS handshake of an expired one, which the node otherwise sees as a bare TLS alert."""
    import datetime

    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate((registry_dir(data_dir) / "node.pem").read_bytes())
    except (OSError, ValueError):
        return ""
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        return (f"the node certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: the registry refuses "
                "it; join the registry again (fieldgate join) for a new one")
    if cert.not_valid_before_utc > now:
        return (f"the node certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC only: check "
                "this node's clock")
    return ""


def parse_token(token: str) -> tuple[str, str]:
    """("<id>.<secret>", CA fingerprint) from a join token "<id>.<secret>.<sha256 hex>"."""
    parts = token.strip().split(".")
    if len(parts) != 3 or len(parts[2]) != 64 or not all(parts):
        raise ConfigError("--token: expected <id>.<secret>.<ca-fingerprint> as `fieldgate registry join-token "
                          "create` prints it")
    return f"{parts[0]}.{parts[1]}", parts[2].lower()


def detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


async def join(url: str, token: str, data_dir: Path, *, name: str | None = None) -> RegistrySettings:
    """Join the registry at `url`; raises AuthError with `token refused: <reason>` when the token is no good."""
    url = url.rstrip("/")
    if not url.startswith("https://"):
        raise ConfigError(f"--registry {url}: expected an https:// URL")
    if name is not None:  # the registry would refuse it: say so before the token travels
        check_node_name(name, "--name")
    directory = registry_dir(data_dir)
    if (directory / "registry.json").exists():
        raise ConfigError(f"{directory}: this node has joined a registry already; remove that directory to join "
                          "again")
    credential, expected = parse_token(token)
    try:
        # The CA comes over an unverified connection and is trusted only when it matches the token's fingerprint;
        # the token's secret travels only over the connection verified with that CA.
        async with httpx.AsyncClient(verify=False, timeout=TIMEOUT) as client:
            ca_response = await client.get(f"{url}/api/v1/ca")
            ca_response.raise_for_status()
        ca_pem = ca_response.text.encode()
        if fingerprint(ca_pem) != expected:
            raise AuthError(f"{url}: the registry's CA does not match the token's fingerprint")
        key = new_key()
        context = ssl.create_default_context(cadata=ca_pem.decode())
        async with httpx.AsyncClient(verify=context, timeout=TIMEOUT) as client:
            request = JoinRequest(token=credential, csr=make_csr(key), name=name)
            response = await client.post(f"{url}/api/v1/join", content=msgspec.json.encode(request),
                                         headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise ConfigError(f"{url}: cannot reach the registry: {exc}") from None
    except ValueError as exc:
        raise AuthError(f"{url}: the registry's CA is not a PEM certificate: {exc}") from None
    if response.status_code == 403:
        raise AuthError(f"token refused: {detail(response)}")
    if response.status_code != 200:
        raise ConfigError(f"{url}: join failed ({response.status_code}): {detail(response)}")
    return save_identity(data_dir, url, ca_pem, key, join_answer(url, response))


def join_answer(url: str, response: httpx.Response) -> JoinResponse:
    """The registry's answer to a join; ConfigError when it is not one."""
    try:
        return msgspec.json.decode(response.content, type=JoinResponse)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{url}: unexpected answer to the join: {exc}") from None


def save_identity(data_dir: Path, url: str, ca_pem: bytes, key: ec.EllipticCurvePrivateKey,
                  answer: JoinResponse) -> RegistrySettings:
    """Keep what a join answered (certificate, node name, interval) with the node's key in <data-dir>/registry/."""
    directory = registry_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # each file whole or not there after a power cut (a joined appliance's first boot is when it may lose power),
    # registry.json, which makes the node joined, last
    write_durable(directory / "ca.pem", ca_pem)
    write_durable(directory / "node.pem", answer.certificate.encode())
    write_private(directory / "node.key", key_pem(key))
    settings = RegistrySettings(url=url, node=answer.node, heartbeat_interval=answer.heartbeat_interval,
                                channel=answer.channel)
    write_durable(directory / "registry.json", msgspec.json.format(msgspec.json.encode(settings)))
    return settings


# --- batch bundles (`fieldgate join --bundle`) ------------------------------------------------------------------


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
        if serial.lower() not in _NO_SERIAL and re.search(r"[a-z0-9]", serial.lower()):
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
    if name is not None and not re.search(r"[a-z0-9]", name.lower()):
        raise ConfigError(f"--name {name!r}: expected a serial number or host name with letters or digits (the node "
                          "is named <prefix>-<them>)")
    if info.expires_at < time.time():
        raise AuthError("batch refused: expired")
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
                raise AuthError(f"batch refused: {detail(response)}")
            if response.status_code != 200:
                raise ConfigError(f"{candidate}: join failed ({response.status_code}): {detail(response)}")
            return save_identity(data_dir, candidate, files["ca.pem"], key, join_answer(candidate, response))
    raise ConfigError(f"cannot reach the registry: {'; '.join(failures)}")

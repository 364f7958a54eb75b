"""The node side of joining: check the registry against the token's CA fingerprint, send a CSR, keep the
certificate in <data-dir>/registry/ (ca.pem, node.pem, node.key, registry.json)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import AuthError, ConfigError
from gateway.pki import fingerprint, key_pem, make_csr, new_key, write_private
from gateway.wire import JoinRequest, JoinResponse

TIMEOUT = 10.0


class RegistrySettings(msgspec.Struct, kw_only=True):
    """registry.json: where the registry is and who this node is to it."""

    url: str
    node: str
    heartbeat_interval: float = 10.0


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
    (directory / "ca.pem").write_bytes(ca_pem)
    (directory / "node.pem").write_text(answer.certificate)
    write_private(directory / "node.key", key_pem(key))
    settings = RegistrySettings(url=url, node=answer.node, heartbeat_interval=answer.heartbeat_interval)
    (directory / "registry.json").write_bytes(msgspec.json.format(msgspec.json.encode(settings)))
    return settings

"""Basic256Sha256 against a node-opcua server that takes no anonymous sessions: the gateway's own certificate made
on first use, SignAndEncrypt and Sign, username and certificate logins, and a server certificate that is not the
pinned or a trusted one refused with a clear error."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fieldgate_opcua import certs
from opcua_helpers import OpcuaServer, plant

from gateway.runtime import Gateway
from gateway.testing import wait_until

PROPERTIES = [
    ("temp", "double", "ReadOnly", '{node_id: "ns=1;s=Line1.Temp"}'),
    ("setpoint", "double", "ReadWrite", '{node_id: "ns=1;s=Line1.Setpoint", mode: poll}'),
]


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpcuaServer]:
    server = OpcuaServer(tmp_path_factory.mktemp("opcua-secure"), security="secure", anonymous=False,
                         users={"op": "secret"}, tick=50)
    server.start()
    yield server
    server.stop()


def device(server: OpcuaServer, name: str, config: str) -> str:
    return plant(server.url, PROPERTIES, name=name, config=f", security_policy: Basic256Sha256, {config}",
                 gateway=False)


async def test_sign_and_encrypt_with_the_gateway_certificate_and_either_login(
        secure_server: OpcuaServer, tmp_path: Path, write_config: Callable[[str], Path],
        start_gateway: Callable[..., Any]) -> None:
    pinned = f"server_certificate: {secure_server.certificate}"
    text = "kind: Gateway\nname: gw\neventbus: {url: none}\n" + "".join([
        device(secure_server, "encrypted", f"security_mode: SignAndEncrypt, {pinned}, login: username, "
                                           "username: op, password: secret"),
        device(secure_server, "signed", f"security_mode: Sign, {pinned}, login: certificate"),
        device(secure_server, "wrong-password", f"{pinned}, login: username, username: op, password: nope"),
        device(secure_server, "anonymous", pinned),
    ])
    gw: Gateway = await start_gateway(write_config(text))
    twins = {name: gw.api.twin(f"default/{name}") for name in ("encrypted", "signed", "wrong-password", "anonymous")}
    await wait_until(lambda: all(t.state != "unknown" for t in twins.values())
                     and all(t.properties["temp"].quality == "good" for n, t in twins.items()
                             if n in ("encrypted", "signed")), timeout=30)
    assert twins["encrypted"].state == twins["signed"].state == "online"
    assert twins["wrong-password"].state == "offline"
    assert twins["wrong-password"].state_reason.endswith("the server refused the login (BadUserAccessDenied)")
    assert twins["anonymous"].state == "offline"
    assert "BadIdentityTokenInvalid" in twins["anonymous"].state_reason or \
        "BadIdentityTokenRejected" in twins["anonymous"].state_reason, twins["anonymous"].state_reason

    await gw.api.set_desired("default/encrypted", "setpoint", 17.5)  # through the encrypted channel
    await wait_until(lambda: twins["encrypted"].properties["setpoint"].reported == 17.5, timeout=15)

    # made on first use in the data dir, and kept: it names the application URI the sessions gave
    own = tmp_path / "data" / "opcua"
    cert = certs.load_certificate(own / certs.CERTIFICATE_FILE)
    assert certs.application_uri_of(cert) == certs.default_application_uri()
    assert (own / certs.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value


async def test_a_server_certificate_neither_pinned_nor_trusted_is_refused(
        secure_server: OpcuaServer, tmp_path: Path, write_config: Callable[[str], Path],
        start_gateway: Callable[..., Any]) -> None:
    other = certs.application_certificate(tmp_path / "elsewhere")  # a certificate of some other server
    login = "login: username, username: op, password: secret"
    text = "kind: Gateway\nname: gw\neventbus: {url: none}\n" + "".join([
        device(secure_server, "pinned-wrong", f"server_certificate: {other.certificate}, {login}"),
        device(secure_server, "untrusted", login),  # the default trust folder, empty at first
    ])
    gw: Gateway = await start_gateway(write_config(text))
    wrong, untrusted = gw.api.twin("default/pinned-wrong"), gw.api.twin("default/untrusted")
    await wait_until(lambda: wrong.state == "offline" and untrusted.state == "offline", timeout=20)
    offered = certs.describe(certs.load_certificate(secure_server.certificate))
    assert wrong.state_reason == (f"the server's certificate {offered} is not the pinned certificate "
                                  f"{other.certificate} ({certs.describe(certs.load_certificate(other.certificate))})"
                                  ": refusing to connect")
    trusted = tmp_path / "data" / "opcua" / "trusted"
    assert untrusted.state_reason.startswith(f"the server's certificate {offered} is not trusted: neither it nor its "
                                             f"issuer is in {trusted}; to trust it, move "), untrusted.state_reason
    (rejected,) = (tmp_path / "data" / "opcua" / "rejected").iterdir()
    assert rejected.read_bytes() == secure_server.certificate.read_bytes()
    assert wrong.properties["temp"].reported is None  # nothing was read from a server not trusted

    trusted.mkdir(parents=True, exist_ok=True)
    shutil.move(rejected, trusted / rejected.name)  # what the message says to do
    await wait_until(lambda: untrusted.state == "online", timeout=30)
    await wait_until(lambda: untrusted.properties["temp"].quality == "good", timeout=10)
    assert wrong.state == "offline"

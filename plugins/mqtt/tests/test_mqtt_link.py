"""The shared session with a broker: on the gateway's eventbus (the embedded broker with its defaults and with users
and rules), over TLS with a client certificate against mosquitto requiring one, and what it refuses."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fieldgate_mqtt import link as links
from fieldgate_mqtt.config import topic_matches
from mqtt_helpers import publish

from gateway.testing import Mosquitto, free_port, wait_until

MODEL = """\
kind: DeviceModel
name: meter
properties:
  - {name: power, type: float}
"""


def config(eventbus: str, device_config: str, *, timeout: str = "30s", name: str = "m1") -> str:
    return f"""\
kind: Gateway
name: gw
eventbus: {eventbus}
---
{MODEL}---
kind: Device
name: {name}
model: meter
timeout: {timeout}
protocol: {{name: mqtt, config: {{{device_config}}}}}
properties:
  - {{name: power, collect_interval: 100ms, visitor: {{topic: "meters/{{device}}", json_pointer: /w}}}}
"""


def more(device_config: str, name: str, *, timeout: str = "30s") -> str:
    """One more device document, for after `config(...)`."""
    return "---\n" + config("{url: none}", device_config, timeout=timeout, name=name).split("---\n", 2)[2]


async def listening(port: int) -> links.Link:
    await wait_until(lambda: [link for link in links.links() if link.login.port == port])
    (link,) = [link for link in links.links() if link.login.port == port]
    await wait_until(lambda: link.subscribed == {"meters/m1"})
    return link


def test_topic_matching_follows_mqtt() -> None:
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/c/d")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c") and topic_matches("#", "a/b")
    assert not topic_matches("+/x", "$SYS/x") and not topic_matches("#", "$hw/a") and topic_matches("$hw/#", "$hw/a")
    assert topic_matches("a//b", "a//b") and not topic_matches("a/+", "a") and topic_matches("+", "")


@pytest.mark.parametrize("users", [False, True], ids=["defaults", "users-and-rules"])
async def test_a_device_on_the_gateways_eventbus(users: bool, write_config: Callable[[str], Path],
                                                 start_gateway: Callable[..., Any]) -> None:
    """On the embedded broker the device logs in as the gateway, whom the broker's rules allow everything: it
    works with the defaults (anonymous clients welcome) and once users are listed (anonymous clients refused, the
    sensor's user may only publish)."""
    port = free_port()
    rules = ("\n  users: [{name: sensor, password: sensor-pw, acl: [{topic: 'meters/#', access: write}]}]"
             if users else "")
    eventbus = f"\n  url: embedded\n  embedded_listen: '127.0.0.1:{port}'{rules}"
    gw = await start_gateway(write_config(config(eventbus, "eventbus: true")))
    link = await listening(port)
    assert link.login.username == "fieldgate" and link.login.client_id.startswith("fieldgate-gw-devices-")

    await publish(port, "meters/m1", json.dumps({"w": 1250.5}), user=("sensor", "sensor-pw") if users else None)
    twin = gw.api.twin("default/m1")
    await wait_until(lambda: twin.properties["power"].reported == 1250.5)
    assert twin.state == "online"


async def test_a_device_on_an_eventbus_that_is_off_says_so(write_config: Callable[[str], Path],
                                                           start_gateway: Callable[..., Any]) -> None:
    gw = await start_gateway(write_config(config("{url: none}", "eventbus: true")))
    twin = gw.api.twin("default/m1")
    await wait_until(lambda: twin.state == "offline")
    assert "the gateway's eventbus is off (eventbus.url: none)" in twin.state_reason


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(directory: Path, name: str, issuer: tuple[x509.Certificate, Any] | None, *,
           server: bool = False) -> tuple[Path, Path, x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(name)).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:
        builder = (builder.issuer_name(_name(name))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True))
        signer = key
    else:
        builder = builder.issuer_name(issuer[0].subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        signer = issuer[1]
    cert = builder.sign(signer, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert, key


class TlsBroker:
    """mosquitto on mqtts:// that requires a client certificate its CA signed; started and stopped by PID."""

    def __init__(self, directory: Path, ca: Path, cert: Path, key: Path) -> None:
        self.port = free_port()
        self.conf = directory / "mosquitto-tls.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                             "require_certificate true\nallow_anonymous true\npersistence false\n"
                             "user root\n")  # the test's directory is private to its user
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([Mosquitto(self.conf.parent).binary, "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def test_mqtts_with_a_client_certificate_and_a_broker_it_does_not_trust(
        tmp_path: Path, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    ca_cert, _, ca, ca_key = _issue(tmp_path, "ca", None)
    other_ca, _, _, _ = _issue(tmp_path, "other-ca", None)
    server_cert, server_key, _, _ = _issue(tmp_path, "broker", (ca, ca_key), server=True)
    client_cert, client_key, _, _ = _issue(tmp_path, "gateway", (ca, ca_key))
    device_cert, device_key, _, _ = _issue(tmp_path, "device", (ca, ca_key))
    broker = TlsBroker(tmp_path, ca_cert, server_cert, server_key)
    broker.start()
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        good = f"url: '{url}', ca_file: '{ca_cert}', cert_file: '{client_cert}', key_file: '{client_key}'"
        wrong = f"url: '{url}', ca_file: '{other_ca}', cert_file: '{client_cert}', key_file: '{client_key}'"
        missing = f"url: '{url}', ca_file: '{tmp_path / 'nowhere.pem'}'"
        text = (config("{url: none}", good) + more(wrong, "m2", timeout="500ms")
                + more(missing, "m3"))
        gw = await start_gateway(write_config(text))
        await wait_until(lambda: [link for link in links.links() if link.login.port == broker.port
                                  and link.subscribed])
        tls = ["--cafile", str(ca_cert), "--cert", str(device_cert), "--key", str(device_key)]
        await publish(broker.port, "meters/m1", json.dumps({"w": 7.5}), tls=tls)
        await wait_until(lambda: gw.api.twin("default/m1").properties["power"].reported == 7.5)

        m2 = gw.api.twin("default/m2")
        await wait_until(lambda: m2.state == "offline" and "is not connected" in m2.state_reason)
        assert "certificate verify failed" in m2.state_reason, m2.state_reason
        m3 = gw.api.twin("default/m3")
        await wait_until(lambda: m3.state == "offline")
        assert m3.state_reason.startswith(f"mqtts://127.0.0.1:{broker.port}: TLS files: "), m3.state_reason
    finally:
        broker.stop()


async def test_one_client_id_for_two_logins_is_refused(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                                                      start_gateway: Callable[..., Any]) -> None:
    """Two sessions with one client id would throw each other off the broker over and over: the second device
    is refused with the reason instead."""
    first = f"url: '{mosquitto.url}', client_id: plant-1"
    second = f"url: '{mosquitto.url}', client_id: plant-1, username: someone"
    text = config("{url: none}", first) + more(second, "m2")
    gw = await start_gateway(write_config(text))
    m1, m2 = gw.api.twin("default/m1"), gw.api.twin("default/m2")
    await wait_until(lambda: m2.state == "offline" or m1.state == "offline")
    refused = m2 if m2.state == "offline" else m1
    assert "uses the client id 'plant-1' with another login" in refused.state_reason

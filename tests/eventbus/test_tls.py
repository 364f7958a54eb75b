"""The eventbus over mqtts:// with a client certificate, against mosquitto requiring one."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.pki import key_pem, make_csr, new_key, write_private
from gateway.registry.ca import CertificateAuthority, cert_pem
from gateway.runtime import Gateway
from tests.conftest import Mosquitto, free_port
from tests.test_runtime import MODEL, virtual_device, wait_for


@contextlib.contextmanager
def tls_broker(conf: Path) -> Iterator[None]:
    broker = subprocess.Popen([Mosquitto(conf.parent).binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield
    finally:
        broker.terminate()
        broker.wait(10)


def client_files(ca: CertificateAuthority, directory: Path, name: str) -> tuple[Path, Path]:
    key = new_key()
    cert = ca.sign_node(make_csr(key), name)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_text(cert_pem(cert))
    write_private(key_path, key_pem(key))
    return cert_path, key_path


async def test_mqtts_with_a_client_certificate(tmp_path: Path, write_config: Callable[[str], Path],
                                               start_gateway: Callable[..., Any]) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server_cert, server_key = ca.write_server_certificate("127.0.0.1")
    gw_cert, gw_key = client_files(ca, tmp_path, "gateway")
    app_cert, app_key = client_files(ca, tmp_path, "app")
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncafile {ca.cert_path}\ncertfile {server_cert}\n"
                    f"keyfile {server_key}\nrequire_certificate true\nallow_anonymous true\npersistence false\n"
                    "user root\n")  # the test directories are private to root
    with tls_broker(conf):
        eventbus = (f"eventbus: {{url: \"mqtts://127.0.0.1:{port}\", ca_file: \"{ca.cert_path}\", "
                    f"cert_file: \"{gw_cert}\", key_file: \"{gw_key}\"}}")
        gw: Gateway = await start_gateway(write_config(MODEL.replace("eventbus: {url: none}", eventbus)
                                                       + virtual_device("d1", "50ms")))
        await wait_for(lambda: gw.eventbus is not None and gw.eventbus.client is not None)
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        context.load_cert_chain(str(app_cert), str(app_key))
        async with aiomqtt.Client("127.0.0.1", port, tls_context=context, timeout=5) as client:
            await client.subscribe("fieldgate/#", qos=1)
            async for message in client.messages:
                data = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                assert str(message.topic) == "fieldgate/test-gw/default/d1/telemetry"
                assert "count" in data["values"]
                break


async def test_mqtts_refuses_an_unknown_broker(tmp_path: Path, write_config: Callable[[str], Path],
                                               start_gateway: Callable[..., Any]) -> None:
    """A broker whose certificate the given CA did not sign is never trusted: the eventbus stays down."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    server_cert, server_key = other.write_server_certificate("127.0.0.1")
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncertfile {server_cert}\nkeyfile {server_key}\n"
                    "allow_anonymous true\npersistence false\nuser root\n")
    with tls_broker(conf):
        eventbus = f"eventbus: {{url: \"mqtts://127.0.0.1:{port}\", ca_file: \"{ca.cert_path}\"}}"
        gw: Gateway = await start_gateway(write_config(MODEL.replace("eventbus: {url: none}", eventbus)
                                                       + virtual_device("d1", "50ms")))
        await wait_for(lambda: gw.store.outboxes.depth.get("eventbus", 0) > 5)
        assert gw.eventbus is not None and gw.eventbus.client is None

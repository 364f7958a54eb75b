"""Users and rules of the embedded broker, against the real mosquitto: passwords (mosquitto_passwd's and ours), ACLs,
anonymous access, the gateway's own login, and `fieldgate check` on bad settings."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.errors import ResourceError
from gateway.eventbus.access import find_mosquitto_passwd, hash_password, write_password_file
from gateway.eventbus.broker import find_mosquitto
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import check_documents, parse_yaml
from gateway.runtime import Gateway
from tests.conftest import FIELDGATE, free_port
from tests.eventbus.test_eventbus import Inbox, next_on, wait_connected
from tests.test_runtime import MODEL, virtual_device

TWIN = "$hw/events/device/default/d1/twin"
TELEMETRY = "fieldgate/test-gw/default/d1/telemetry"


def gateway_with(eventbus: str, port: int, extra: str = "") -> str:
    settings = f"eventbus:\n  url: embedded\n  embedded_listen: \"127.0.0.1:{port}\"\n{eventbus}"
    return MODEL.replace("eventbus: {url: none}\n", settings) + virtual_device("d1", interval="200ms") + extra


@asynccontextmanager
async def client(port: int, user: str | None = None, password: str | None = None, *topics: str
                 ) -> AsyncIterator[tuple[aiomqtt.Client, Inbox]]:
    """An app's MQTT session as `user` (None: anonymous), collecting what it receives on `topics`."""
    queue = Inbox()
    async with aiomqtt.Client("127.0.0.1", port, username=user, password=password, timeout=5) as session:
        for topic in topics:
            await session.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in session.messages:
                queue.put_nowait((str(message.topic), json.loads(bytes(message.payload))))  # type: ignore[arg-type]

        task = asyncio.create_task(collect())
        try:
            yield session, queue
        finally:
            task.cancel()


async def refused(port: int, user: str | None, password: str | None) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=user, password=password, timeout=5):
            return False
    except aiomqtt.MqttError:
        return True


def update(event_id: str, value: str) -> str:
    return json.dumps({"event_id": event_id, "timestamp": 1, "twin": {"setpoint": {"expected": {"value": value}}}})


USERS = """\
  users:
    - name: reader
      password: reader-pw
      acl:
        - {topic: "fieldgate/#", access: read}
    - name: writer
      password_file: PASSWORD_FILE
      acl:
        - {topic: "$hw/events/device/+/+/twin/update", access: write}
        - {topic: "$hw/events/device/+/+/twin/update/result", access: read}
    - name: monitor
      password_secret: {secret: mqtt-users, key: monitor}
      acl:
        - {topic: "$hw/#", access: read}
"""
SECRET = """\
---
kind: Secret
name: mqtt-users
data: {monitor: monitor-pw}
"""


async def test_users_rules_and_passwords_hold_at_the_embedded_broker(
        tmp_path: Path, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    port = free_port()
    (tmp_path / "writer.pw").write_text("writer-pw\n")
    users = USERS.replace("PASSWORD_FILE", str(tmp_path / "writer.pw"))
    gw: Gateway = await start_gateway(write_config(gateway_with(users, port, SECRET)))
    await wait_connected(gw)  # the gateway logs in with its own credentials

    assert await refused(port, None, None), "anonymous clients are refused once users are listed"
    assert await refused(port, "reader", "wrong")
    assert await refused(port, "writer", "reader-pw")
    async with client(port, "reader", "reader-pw", "fieldgate/#") as (reader, readings), \
            client(port, "monitor", "monitor-pw", f"{TWIN}/update") as (_, monitored), \
            client(port, "writer", "writer-pw", f"{TWIN}/update/result") as (writer, results):
        assert "count" in (await next_on(readings, TELEMETRY, timeout=10))["values"]
        # The reader may not write: its update reaches nobody (acknowledged, then dropped by the broker) ...
        await reader.publish(f"{TWIN}/update", update("from-reader", "11"), qos=1)
        # ... and the writer's, published after it, is the first that the monitor and the gateway see.
        await writer.publish(f"{TWIN}/update", update("from-writer", "22"), qos=1)
        seen = await next_on(monitored, f"{TWIN}/update")
        assert seen["event_id"] == "from-writer"
        result = await next_on(results, f"{TWIN}/update/result")
        assert result["event_id"] == "from-writer"
        assert result["twin"]["setpoint"]["expected"]["value"] == "22.0"
        # The writer may not read telemetry: nothing of it arrives, while the reader keeps getting it.
        await writer.subscribe("fieldgate/#", qos=1)
        await next_on(readings, TELEMETRY, timeout=10)
        await next_on(readings, TELEMETRY, timeout=10)
        assert not [topic for topic, _ in results.held if topic.startswith("fieldgate/")]
        assert results.empty()
    assert gw.api.twin("default/d1").properties["setpoint"].desired == 22.0
    assert [e for e in monitored.held if e[1].get("event_id") == "from-reader"] == []


async def test_the_gateway_login_is_private_new_at_every_start_and_may_do_everything(
        tmp_path: Path, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    port = free_port()
    config = write_config(gateway_with("  allow_anonymous: false\n", port))
    logins = []
    for _ in range(2):
        gw: Gateway = await start_gateway(config)
        await wait_connected(gw)
        path = tmp_path / "data" / "broker" / "gateway.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "data" / "broker" / "passwd").stat().st_mode) == 0o600
        login = json.loads(path.read_text())
        logins.append(login["password"])
        assert await refused(port, None, None)
        async with client(port, login["username"], login["password"], "fieldgate/#", f"{TWIN}/update/result") \
                as (session, queue):
            await next_on(queue, TELEMETRY, timeout=10)
            await session.publish(f"{TWIN}/update", update("as-gateway", "33"), qos=1)
            assert (await next_on(queue, f"{TWIN}/update/result"))["event_id"] == "as-gateway"
        await gw.stop()
    assert logins[0] != logins[1]


async def test_anonymous_clients_when_allowed_beside_users_follow_their_own_rules(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    port = free_port()
    settings = ("  allow_anonymous: true\n  anonymous_acl: [{topic: \"fieldgate/#\", access: read}]\n"
                "  users: [{name: app, password: app-pw, acl: [{topic: \"$hw/#\", access: readwrite}]}]\n")
    gw: Gateway = await start_gateway(write_config(gateway_with(settings, port)))
    await wait_connected(gw)
    async with client(port, None, None, "fieldgate/#") as (anonymous, readings), \
            client(port, "app", "app-pw", f"{TWIN}/update/result") as (app, results):
        await next_on(readings, TELEMETRY, timeout=10)
        await anonymous.publish(f"{TWIN}/update", update("anonymous", "12"), qos=1)
        await app.publish(f"{TWIN}/update", update("app", "13"), qos=1)
        assert (await next_on(results, f"{TWIN}/update/result"))["event_id"] == "app"
    assert gw.api.twin("default/d1").properties["setpoint"].desired == 13.0


async def test_changed_passwords_and_rules_apply_on_reload(
        tmp_path: Path, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    port = free_port()
    before = "  users: [{name: app, password: first-pw, acl: [{topic: \"fieldgate/#\", access: read}]}]\n"
    config = write_config(gateway_with(before, port))
    gw: Gateway = await start_gateway(config)
    await wait_connected(gw)
    assert not await refused(port, "app", "first-pw")
    config.write_text(gateway_with(before.replace("first-pw", "second-pw"), port))
    await gw.configuration.reload_files()
    for _ in range(100):  # mosquitto applies SIGHUP between two of its loop turns
        if await refused(port, "app", "first-pw"):
            break
        await asyncio.sleep(0.05)
    assert await refused(port, "app", "first-pw")
    assert not await refused(port, "app", "second-pw")
    assert gw.eventbus is not None and gw.eventbus.client is not None  # the gateway's own login still holds


@pytest.mark.parametrize("tool", [find_mosquitto_passwd(), None], ids=["mosquitto_passwd", "pbkdf2-here"])
async def test_password_files_are_read_by_the_real_mosquitto(tmp_path: Path, tool: str | None) -> None:
    passwords = {"app": "pa:ss wörd", "other": "x"}
    await write_password_file(tmp_path / "passwd", passwords, tool=tool)
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in (tmp_path / "passwd").read_text().split())
    port = free_port()
    (tmp_path / "conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                                   f"password_file {tmp_path / 'passwd'}\n"
                                   + ("user root\n" if os.geteuid() == 0 else ""))  # keep reading our 0600 file
    binary = find_mosquitto()
    assert binary is not None
    broker = await asyncio.create_subprocess_exec(binary, "-c", str(tmp_path / "conf"),
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if not await refused(port, "app", "pa:ss wörd"):
                break
            await asyncio.sleep(0.05)
        assert not await refused(port, "app", "pa:ss wörd")
        assert not await refused(port, "other", "x")
        assert await refused(port, "app", "x")
        assert await refused(port, None, None)
    finally:
        broker.terminate()
        await broker.wait()


def test_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    # The line mosquitto_passwd 2.0.11 wrote for password `secret1` with this salt.
    expected = ("$7$101$bc9hGYl5VML8jCk1$"
                "MivqeFcwAr6Jnn5fGKZ0biOYrPqdcxS03qhXGVMlNQu8FH7dN7P6coO1fYe5EffPcLV8UouIMZf99J4+5YYbrg==")
    assert hash_password("secret1", base64.b64decode("bc9hGYl5VML8jCk1")) == expected


BAD = [
    ("  users: [{name: fieldgate, password: x}]\n", "$.eventbus.users[0].name: 'fieldgate' is the gateway's own user"),
    ("  users: [{name: a, password: x}, {name: a, password: y}]\n", "$.eventbus.users[1].name: duplicate user 'a'"),
    ("  users: [{name: a}]\n", "$.eventbus.users[0]: give one of password, password_file or password_secret"),
    ("  users: [{name: a, password: x, password_file: /x}]\n",
     "$.eventbus.users[0]: give one of password, password_file or password_secret"),
    ("  users: [{name: a, password_file: rel.pw}]\n", "$.eventbus.users[0].password_file: 'rel.pw' must be an "
     "absolute path"),
    ("  users: [{name: a, password_file: /nonexistent/a.pw}]\n", "$.eventbus.users[0].password_file: cannot read "
     "/nonexistent/a.pw"),
    ("  users: [{name: a, password_secret: {secret: nope, key: k}}]\n",
     "$.eventbus.users[0].password_secret.secret: no Secret default/nope"),
    ("  users: [{name: a, password_secret: {secret: mqtt-users, key: k}}]\n",
     "$.eventbus.users[0].password_secret.key: Secret default/mqtt-users has no key 'k' (keys: monitor)"),
    ("  users: [{name: a, password: \"x\\ny\"}]\n", "$.eventbus.users[0].password: a password is one line"),
    ("  users: [{name: a, password: x, acl: [{topic: \"a/#/b\", access: read}]}]\n",
     "$.eventbus.users[0].acl[0].topic: 'a/#/b': `#` must be a whole level, and the last one"),
    ("  users: [{name: a, password: x, acl: [{topic: \"a/b+\", access: write}]}]\n",
     "$.eventbus.users[0].acl[0].topic: 'a/b+': `+` must be a whole level"),
    ("  anonymous_acl: [{topic: \"a\\nuser x\", access: read}]\n",
     "$.eventbus.anonymous_acl[0].topic: 'a\\nuser x': a topic filter has no control characters"),
    ("  users: [{name: a, password: x, acl: [{topic: a, access: publish}]}]\n",
     "$.eventbus.users[0].acl[0].access: Invalid enum value 'publish'"),
    ("  users: [{name: \"a b\", password: x}]\n", "$.eventbus.users[0].name: Expected str matching regex"),
]


@pytest.mark.parametrize(("settings", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_settings_are_reported_with_their_path(settings: str, message: str) -> None:
    text = gateway_with(settings, 1883, SECRET)
    with pytest.raises(ResourceError) as caught:
        check_documents(parse_yaml(text, "gw.yaml"), protocol_registry(_plugins()))
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(f"gw.yaml: document 1 (Gateway test-gw): {message}"), \
        caught.value.problems


def test_settings_of_the_embedded_broker_are_refused_with_an_external_one() -> None:
    text = MODEL.replace("{url: none}", "{url: \"mqtt://127.0.0.1:1883\", allow_anonymous: false}")
    with pytest.raises(ResourceError) as caught:
        check_documents(parse_yaml(text, "gw.yaml"), protocol_registry(_plugins()))
    assert caught.value.problems == ["gw.yaml: document 1 (Gateway test-gw): $.eventbus.allow_anonymous: configures "
                                     "the embedded broker (url: embedded); the broker at mqtt://127.0.0.1:1883 has "
                                     "its own access control"]


def test_fieldgate_check_names_file_document_and_field(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(gateway_with("  users: [{name: a, password_file: /nonexistent/a.pw}]\n", 1883))
    result = subprocess.run([*FIELDGATE, "check", str(tmp_path / "gw.yaml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{tmp_path}/gw.yaml: document 1 (Gateway test-gw): "
                                    "$.eventbus.users[0].password_file: cannot read /nonexistent/a.pw")


def _plugins() -> Any:
    from gateway.plugins import get_plugin_manager

    return get_plugin_manager()


async def test_a_plugin_gets_the_eventbus_login_the_broker_allows_everything(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    """`eventbus_login()` gives a plugin the gateway's own login at the embedded broker: with users and rules
    listed (anonymous clients refused), a session of its own with it may subscribe to and receive anything."""
    port = free_port()
    users = "  users: [{name: app, password: app-pw, acl: [{topic: 'plant/#', access: write}]}]\n"
    gw: Gateway = await start_gateway(write_config(gateway_with(users, port)))
    await wait_connected(gw)
    login = gw.api.eventbus_login()
    assert login is not None and (login.host, login.port, login.tls) == ("127.0.0.1", port, False)
    assert login.username == "fieldgate" and login.password and login.password not in repr(login)
    assert await refused(port, None, None)
    async with client(port, login.username, login.password, "plant/#") as (_, received), \
            client(port, "app", "app-pw") as (app, _):
        await app.publish("plant/meter", b"{\"w\": 5}", qos=1)
        assert await next_on(received, "plant/meter", timeout=10) == {"w": 5}


def test_the_eventbus_login_of_an_external_broker_and_of_none(tmp_path: Path) -> None:
    external = tmp_path / "external.yaml"
    external.write_text(MODEL.replace("eventbus: {url: none}", "eventbus: {url: 'mqtts://broker.plant:8884', "
                                      "username: gw, password: pw, ca_file: /etc/ca.pem}"))
    login = Gateway.from_path(external, tmp_path / "data").api.eventbus_login()
    assert login is not None
    assert (login.host, login.port, login.tls, login.username, login.password, login.ca_file) == (
        "broker.plant", 8884, True, "gw", "pw", "/etc/ca.pem")
    off = tmp_path / "off.yaml"
    off.write_text(MODEL)
    assert Gateway.from_path(off, tmp_path / "data2").api.eventbus_login() is None

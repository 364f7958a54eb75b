"""Edge node settings from the properties of a `sparkplug` endpoint, and the bdSeq counter in the data dir."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fieldgate_sparkplug.plugin import ENDPOINT_TYPE
from fieldgate_sparkplug.settings import BdSeqCounter, NodeSettings

from gateway.errors import ConfigError, ResourceError
from gateway.resources.loader import convert_properties


def node_settings(props: dict[str, Any], node_name: str) -> NodeSettings:
    """The settings of an endpoint with these properties, converted as the loader converts them."""
    return NodeSettings.from_properties(convert_properties(ENDPOINT_TYPE, props), node_name)


def test_defaults_and_overrides() -> None:
    settings = node_settings({"url": "mqtts://user:pw@broker.local", "group_id": "g"}, "gw-7")
    assert (settings.host, settings.port, settings.tls) == ("broker.local", 8883, True)
    assert settings.edge_node_id == "gw-7" and settings.client_id == "fieldgate-sparkplug-g-gw-7"
    assert (settings.username, settings.password, settings.qos, settings.primary_host_id) == ("user", "pw", 0, None)
    settings = node_settings({"url": "mqtt://127.0.0.1:1999", "group_id": "g", "edge_node_id": "e", "qos": "1",
                              "primary_host_id": "scada", "client_id": "c"}, "gw")
    assert (settings.port, settings.qos, settings.primary_host_id, settings.client_id) == (1999, 1, "scada", "c")


# The properties are checked when the configuration loads: each bad one is named by its field path and value.
@pytest.mark.parametrize("props, reason", [
    ({"group_id": "g"}, "$.properties.url: a sparkplug endpoint needs `url`"),
    ({"url": "http://x", "group_id": "g"}, "$.properties.url: 'http://x': expected mqtt://"),
    ({"url": "mqtt://x:port", "group_id": "g"}, "$.properties.url: 'mqtt://x:port' has a bad port"),
    ({"url": "mqtt://x"}, "$.properties.group_id: a sparkplug endpoint needs `group_id`"),
    ({"url": "mqtt://x", "group_id": "a/b"}, "$.properties.group_id: 'a/b' must be one non-empty topic level"),
    ({"url": "mqtt://x", "group_id": "g", "edge_node_id": "#"}, "$.properties.edge_node_id: '#' must be"),
    ({"url": "mqtt://x", "group_id": "g", "qos": "2"}, "$.properties.qos: Expected int <= 1, got '2'"),
    ({"url": "mqtt://x", "group_id": "g", "primary_host_id": "+"}, "$.properties.primary_host_id: '+' must be"),
    ({"url": "mqtt://x", "group_id": "g", "key_file": "k.pem"}, "$.properties.key_file: needs cert_file"),
    ({"url": "mqtt://x", "group_id": "g", "keepalive": 2}, "$.properties.keepalive: Expected int >= 5, got 2"),
])
def test_bad_settings_are_named(props: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        node_settings(props, "gw")


def test_bdseq_counts_accepted_connections_and_wraps(tmp_path: Path) -> None:
    settings = node_settings({"url": "mqtt://x", "group_id": "plant 1", "edge_node_id": "e"}, "gw")
    counter = BdSeqCounter(tmp_path, settings)
    assert counter.upcoming() == 0 and counter.upcoming() == 0, "a refused connection does not use up a bdSeq"
    for expected in (0, 1, 2):
        value = counter.upcoming()
        assert value == expected
        counter.commit(value)
    assert counter.path == tmp_path / "sparkplug" / "plant_1--e.bdseq"
    assert BdSeqCounter(tmp_path, settings).upcoming() == 3, "kept across restarts"
    counter.path.write_text("255\n")
    assert BdSeqCounter(tmp_path, settings).upcoming() == 0
    counter.path.write_text("garbage")
    assert BdSeqCounter(tmp_path, settings).upcoming() == 0


BAD_ENDPOINT = """\
kind: Gateway
name: gw
eventbus: {url: none}
---
kind: Endpoint
name: scada
type: mqtt
properties: {plugin: sparkplug, url: "mqtt://127.0.0.1:1"}
"""


# Before the properties were checked at load, this endpoint was logged and skipped when the gateway started; now
# the configuration is refused, so a bad endpoint still never runs, and the gateway does not start with it.
async def test_a_bad_endpoint_is_refused_at_load(write_config: Any, start_gateway: Any) -> None:
    path = write_config(BAD_ENDPOINT)
    expected = f"{path}: document 2 (Endpoint scada): $.properties.group_id: a sparkplug endpoint needs `group_id`"
    with pytest.raises(ResourceError) as info:
        await start_gateway(path)
    assert any(problem.startswith(expected) for problem in info.value.problems), info.value.problems
    for form in (BAD_ENDPOINT, BAD_ENDPOINT.replace("type: mqtt", "type: sparkplug").replace("plugin: sparkplug, ",
                                                                                          "")):
        path.write_text(textwrap.dedent(form))
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "check", str(path),
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
        assert process.returncode == 2 and expected in stderr.decode(), stderr

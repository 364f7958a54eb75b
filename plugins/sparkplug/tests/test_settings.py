"""Edge node settings from Endpoint properties, and the bdSeq counter in the data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fieldgate_sparkplug.settings import BdSeqCounter, NodeSettings

from gateway.errors import ConfigError


def test_defaults_and_overrides() -> None:
    settings = NodeSettings.from_properties({"url": "mqtts://user:pw@broker.local", "group_id": "g"}, "gw-7")
    assert (settings.host, settings.port, settings.tls) == ("broker.local", 8883, True)
    assert settings.edge_node_id == "gw-7" and settings.client_id == "fieldgate-sparkplug-g-gw-7"
    assert (settings.username, settings.password, settings.qos, settings.primary_host_id) == ("user", "pw", 0, None)
    settings = NodeSettings.from_properties({"url": "mqtt://127.0.0.1:1999", "group_id": "g", "edge_node_id": "e",
                                             "qos": "1", "primary_host_id": "scada", "client_id": "c"}, "gw")
    assert (settings.port, settings.qos, settings.primary_host_id, settings.client_id) == (1999, 1, "scada", "c")


@pytest.mark.parametrize("props, reason", [
    ({"group_id": "g"}, "url ''"),
    ({"url": "http://x", "group_id": "g"}, "expected mqtt://"),
    ({"url": "mqtt://x"}, "group_id: required"),
    ({"url": "mqtt://x", "group_id": "a/b"}, "group_id 'a/b'"),
    ({"url": "mqtt://x", "group_id": "g", "edge_node_id": "#"}, "edge_node_id '#'"),
    ({"url": "mqtt://x", "group_id": "g", "qos": "2"}, "qos '2'"),
    ({"url": "mqtt://x", "group_id": "g", "primary_host_id": "+"}, "primary_host_id"),
    ({"url": "mqtt://x", "group_id": "g", "key_file": "k.pem"}, "needs cert_file"),
])
def test_bad_settings_are_named(props: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        NodeSettings.from_properties(props, "gw")


def test_bdseq_counts_accepted_connections_and_wraps(tmp_path: Path) -> None:
    settings = NodeSettings.from_properties({"url": "mqtt://x", "group_id": "plant 1", "edge_node_id": "e"}, "gw")
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


async def test_a_bad_endpoint_is_logged_and_the_gateway_runs(write_config: Any, start_gateway: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = write_config("""\
        kind: Gateway
        name: gw
        eventbus: {url: none}
        ---
        kind: Endpoint
        name: scada
        type: mqtt
        properties: {plugin: sparkplug, url: "mqtt://127.0.0.1:1"}
        """)
    gw = await start_gateway(path)
    assert "Endpoint default/scada (plugin: sparkplug): group_id: required" in caplog.text
    assert gw.status()["node"] == "gw"

"""The pages through the app on the test's loop: what they show and what their forms change."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.runtime import Gateway
from gateway.web.monitor import recent_errors
from tests.test_runtime import wait_for


async def test_dashboard(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    viewer = await open_browser("viewer")
    before = len(recent_errors().since(3600))
    logging.getLogger("gateway.test").warning("a warning for the dashboard")
    page = await viewer.client.get("/")
    assert page.status_code == 200
    assert "not joined" in page.text and "Memory" in page.text and "CPU" in page.text
    assert re.search(r'id="count-online">2<', page.text)
    assert f'id="errors-count">{before + 1}<' in page.text
    assert "a warning for the dashboard" in page.text
    assert 'href="/users"' not in page.text  # admin pages are not offered to viewers


async def test_the_dashboard_shows_memory_once_in_the_units_of_its_plots(web_gateway: Gateway,
                                                                          open_browser: Callable[..., Any]) -> None:
    from gateway.ops.sampler import local_monitor

    monitor = local_monitor(web_gateway.api)
    assert monitor is not None
    monitor.sample_now()  # a point for the plots
    page = (await (await open_browser("viewer")).client.get("/")).text
    assert 'aria-label="Memory: used' in page  # the memory plot, in percent
    assert not re.search(r"Memory <tspan[^>]*>[^<]*B<", page)  # and no second byte figure in its title
    host = re.search(r"<dt>Memory</dt><dd>(.*?)</dd>", page, re.S)
    assert host and re.search(r"\d+(\.\d)? [KMGT]iB of \d+(\.\d)? [KMGT]iB", host.group(1)), host
    assert re.search(r"<dt>Gateway process</dt><dd>\d+(\.\d)? [KMG]iB</dd>", page)


async def test_the_dashboard_names_the_uplink_beside_the_outboxes(web_gateway: Gateway,
                                                                  open_browser: Callable[..., Any]) -> None:
    viewer = await open_browser("viewer")
    alone = (await viewer.client.get("/")).text
    assert "No sink keeps an outbox" in alone and "registry uplink" not in alone
    web_gateway.api.start_task("uplink", lambda: asyncio.sleep(3600))  # the uplink's supervised task, running
    await wait_for(lambda: web_gateway.api.tasks()["uplink"].state == "running")
    joined = (await viewer.client.get("/")).text
    assert "No sinks with outboxes yet" not in joined and "No sink keeps an outbox" not in joined
    row = re.search(r'<tr data-outbox="registry uplink">.*?</tr>', joined, re.S)
    assert row and "running" in row.group(0) and "heartbeat" in row.group(0)


async def test_device_list_filters_and_search(open_browser: Callable[..., Any]) -> None:
    viewer = await open_browser("viewer")

    async def listed(**params: str) -> list[str]:
        page = await viewer.client.get("/devices", params=params)
        assert page.status_code == 200
        return re.findall(r'<td><a href="/devices/([^"]+)">', page.text)

    assert await listed() == ["default/d1", "default/d2"]
    assert await listed(label="line=2") == ["default/d2"]
    assert await listed(state="offline") == []
    assert await listed(state="online") == ["default/d1", "default/d2"]
    assert await listed(model="m") == ["default/d1", "default/d2"]
    assert await listed(model="nope") == []
    assert await listed(q="D1") == ["default/d1"]
    assert (await viewer.client.get("/devices", params={"page": "0"})).status_code == 400


async def test_device_page_shows_twin_limits_and_history(web_gateway: Gateway,
                                                         open_browser: Callable[..., Any]) -> None:
    operator = await open_browser("operator")
    page = await operator.client.get("/devices/default/d1")
    assert page.status_code == 200
    for prop in ("count", "level", "setpoint", "enabled"):
        assert f'data-prop="{prop}"' in page.text
    assert 'max="50.0"' in page.text and 'min="0.0"' in page.text  # the model's limits on the setpoint input
    assert page.text.count('class="set-desired"') == 2  # only the ReadWrite properties
    assert (await operator.client.get("/devices/default/nope")).status_code == 404
    await asyncio.sleep(0.3)
    await web_gateway.store.flush()
    plot = await operator.client.get("/devices/default/d1/plot/level", params={"window": "15m"})
    assert plot.status_code == 200
    body = plot.json()
    assert body["property"] == "level" and len(body["points"]) >= 1  # 240 buckets of 3.75 s over 15 min
    time_, low, high, mean = body["points"][-1]
    assert body["since"] <= time_ <= body["until"] + 4 and low < mean < high  # several readings in the bucket
    assert (await operator.client.get("/devices/default/d1/plot/level", params={"window": "2y"})).status_code == 400
    assert (await operator.client.get("/devices/default/d1/plot/nope")).status_code == 404


async def test_setting_a_desired_value_from_the_form(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    operator = await open_browser("operator")
    json = {"accept": "application/json"}
    response = await operator.post("/devices/default/d1/desired", {"property": "setpoint", "value": "500"},
                                   headers=json)
    assert response.status_code == 400 and "above the maximum 50" in response.json()["error"]
    response = await operator.post("/devices/default/d1/desired", {"property": "count", "value": "5"}, headers=json)
    assert response.status_code == 400 and "ReadOnly" in response.json()["error"]
    response = await operator.post("/devices/default/d1/desired", {"property": "setpoint", "value": "warm"})
    assert response.status_code == 303  # without JavaScript: back to the page, the error shown there
    page = await operator.client.get(response.headers["location"])
    assert "expected a number" in page.text
    response = await operator.post("/devices/default/d1/desired", {"property": "setpoint", "value": "33.5"},
                                   headers=json)
    assert response.status_code == 200 and response.json() == {"ok": True, "property": "setpoint", "desired": 33.5}
    await wait_for(lambda: web_gateway.api.twin("default/d1").properties["setpoint"].reported == 33.5)
    response = await operator.post("/devices/default/d1/desired", {"property": "enabled", "value": "true"},
                                   headers=json)
    assert response.json()["desired"] is True
    entry = next(row for row in await web_gateway.store.audit.recent() if row["action"] == "set-desired")
    assert entry["actor"] == "operator" and entry["address"] == "127.0.0.9"


async def test_users_and_tokens(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    response = await admin.post("/users", {"name": "carol", "role": "operator", "password": "short"})
    assert response.status_code == 400 and "at least 8 characters" in response.text
    response = await admin.post("/users", {"name": "carol", "role": "operator", "password": "long enough"})
    assert response.status_code == 303
    assert (await web_gateway.store.users.get("carol") or ("",))[0] == "operator"
    created = await admin.post("/tokens", {"role": "viewer", "description": "grafana"})
    assert created.status_code == 200
    token = re.search(r'<pre id="new-token">(fgt_[^<]+)</pre>', created.text)
    assert token
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    assert (await admin.client.get("/api/v1/devices", headers=headers)).status_code == 200
    token_id = re.search(r'action="/tokens/(\d+)/revoke"', created.text)
    assert token_id
    assert (await admin.post(f"/tokens/{token_id.group(1)}/revoke")).status_code == 303
    assert (await admin.client.get("/api/v1/devices", headers=headers)).status_code == 401
    assert (await admin.post(f"/tokens/{token_id.group(1)}/revoke")).status_code == 404
    actions = [(row["action"], row["actor"]) for row in await web_gateway.store.audit.recent()]
    for action in ("user-add", "token-create", "token-revoke"):
        assert (action, "admin") in actions
    page = await admin.client.get("/users")
    assert "carol" in page.text and "grafana" in page.text and "fgt_" not in page.text


async def test_registry_settings_join(web_gateway: Gateway, open_browser: Callable[..., Any], tmp_path: Path) -> None:
    from tests.registry.conftest import Registry, stop

    admin = await open_browser("admin")
    response = await admin.post("/settings", {"registry_url": "ftp://x", "join_token": "t"})
    assert response.status_code == 400 and "expected https://" in response.text
    dashboard = await admin.client.get("/")
    assert "not joined" in dashboard.text
    registry = Registry(tmp_path / "registry")
    await asyncio.to_thread(registry.start)
    try:
        response = await admin.post("/settings", {"registry_url": registry.url, "join_token": "abc.def.0123"})
        assert response.status_code == 400 and "token" in response.text
        token = await asyncio.to_thread(registry.token)
        response = await admin.post("/settings", {"registry_url": registry.url, "join_token": token})
        assert response.status_code == 303, response.text
        page = await admin.client.get("/settings")
        assert "Joined" in page.text and registry.url in page.text
        assert token not in page.text
        assert (web_gateway.data_dir / "registry" / "node.pem").exists()
        # the uplink runs at once: the registry sees the node heartbeat
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            nodes = await asyncio.to_thread(registry.nodes)
            if any(node["status"] == "healthy" for node in nodes.values()):
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError(f"the node never became healthy at the registry: {nodes}")
        dashboard = await admin.client.get("/")
        assert registry.url in dashboard.text and "not joined" not in dashboard.text
        actions = [row["action"] for row in await web_gateway.store.audit.recent()]
        assert "registry-join" in actions
    finally:
        if registry.process is not None:
            await asyncio.to_thread(stop, registry.process)


async def test_the_settings_join_names_the_node_as_its_gateway_document(web_gateway: Gateway,
                                                                        open_browser: Callable[..., Any],
                                                                        tmp_path: Path) -> None:
    from tests.registry.conftest import Registry, stop

    admin = await open_browser("admin")
    form = (await admin.client.get("/settings")).text
    assert re.search(r'<input name="node_name" value="test-gw"', form), "the form offers the Gateway's name"
    bad = await admin.post("/settings", {"registry_url": "https://127.0.0.1:1", "join_token": "a.b.c",
                                         "node_name": "Not A Name"})
    assert bad.status_code == 400 and "node name" in bad.text
    registry = Registry(tmp_path / "registry")
    await asyncio.to_thread(registry.start)
    try:
        token = await asyncio.to_thread(registry.token)
        response = await admin.post("/settings", {"registry_url": registry.url, "join_token": token,
                                                  "node_name": "test-gw"})
        assert response.status_code == 303, response.text
        assert "test-gw" in await asyncio.to_thread(registry.nodes)
    finally:
        if registry.process is not None:
            await asyncio.to_thread(stop, registry.process)


async def test_read_only_pages(open_browser: Callable[..., Any]) -> None:
    viewer = await open_browser("viewer")
    models = await viewer.client.get("/models")
    assert "default/m" in models.text and "setpoint" in models.text and "/models/edit" not in models.text
    plugins = await viewer.client.get("/plugins")
    assert "gateway.protocols.virtual" in plugins.text and "virtual" in plugins.text
    assert (await viewer.client.get("/endpoints")).status_code == 200
    sinks = await viewer.client.get("/sinks")
    assert "store-writer" in sinks.text
    audit = await viewer.client.get("/audit")
    assert "login" in audit.text

"""The REST API through the app on the test's own loop (httpx ASGI transport): contracts, roles and bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import AuthError
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import add_user, authenticate_user, create_token
from tests.test_runtime import MODEL, virtual_device, wait_for


@pytest.fixture
async def gateway(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> Gateway:
    config = MODEL + virtual_device("d1", interval="100ms") + virtual_device("d2").replace(
        "model: m", "model: m\nlabels: {line: \"2\"}")
    gw: Gateway = await start_gateway(write_config(config))
    await wait_for(lambda: gw.api.twin("default/d1").properties["count"].reported is not None)
    return gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    # The app on the test's own loop, as on the gateway's loop in production (Litestar's test client would run
    # it on a second loop in a thread, sharing the store's locks across loops).
    transport = httpx.ASGITransport(app=create_app(gateway.api))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        yield client


@pytest.fixture
async def tokens(gateway: Gateway) -> dict[str, dict[str, str]]:
    return {role: {"Authorization": f"Bearer {await create_token(gateway.store, role)}"}
            for role in ("viewer", "operator", "admin")}


async def test_healthz_is_public(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "node": "test-gw"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/default/d1"), ("GET", "/api/v1/status"),
    ("PUT", "/api/v1/devices/default/d1/twin/setpoint"), ("GET", "/schema/openapi.json"),
    ("GET", "/api/v1/devices/default/d1/history/count"), ("GET", "/api/v1/plugins"),
])
async def test_anonymous_and_bad_tokens_get_401(client: httpx.AsyncClient, method: str, path: str) -> None:
    body = {"json": {"desired": 1}} if method == "PUT" else {}
    assert (await client.request(method, path, **body)).status_code == 401
    bad = {"Authorization": "Bearer fgt_not-a-real-token"}
    assert (await client.request(method, path, headers=bad, **body)).status_code == 401
    basic = {"Authorization": "Basic YWRtaW46YWRtaW4="}
    assert (await client.request(method, path, headers=basic, **body)).status_code == 401


async def test_device_list_and_filters(client: httpx.AsyncClient, tokens: dict[str, dict[str, str]]) -> None:
    response = await client.get("/api/v1/devices", headers=tokens["viewer"])
    assert response.status_code == 200
    assert [d["id"] for d in response.json()] == ["default/d1", "default/d2"]
    response = await client.get("/api/v1/devices", params={"label": "line=2"}, headers=tokens["viewer"])
    assert [d["name"] for d in response.json()] == ["d2"]
    response = await client.get("/api/v1/devices", params={"state": "offline"}, headers=tokens["viewer"])
    assert response.json() == []
    response = await client.get("/api/v1/devices", params={"q": "d1"}, headers=tokens["viewer"])
    assert [d["name"] for d in response.json()] == ["d1"]


async def test_a_label_filter_without_a_value_is_refused(client: httpx.AsyncClient,
                                                        tokens: dict[str, dict[str, str]]) -> None:
    response = await client.get("/api/v1/devices", params={"label": "false"}, headers=tokens["viewer"])
    assert response.status_code == 400 and "label" in response.json()["detail"]
    response = await client.get("/api/v1/devices", params={"label": "line="}, headers=tokens["viewer"])
    assert response.status_code == 200 and response.json() == []


async def test_device_twin_contract(client: httpx.AsyncClient, tokens: dict[str, dict[str, str]]) -> None:
    response = await client.get("/api/v1/devices/default/d1", headers=tokens["viewer"])
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "online"
    assert set(body["twin"]) == {"count", "level", "setpoint", "enabled"}
    count = body["twin"]["count"]
    assert set(count) >= {"desired", "reported", "reported_at", "quality"}
    assert isinstance(count["reported"], int) and count["quality"] == "good"
    assert count["reported_at"].endswith("Z")
    assert (await client.get("/api/v1/devices/default/nope", headers=tokens["viewer"])).status_code == 404


async def test_set_desired_by_role(client: httpx.AsyncClient, gateway: Gateway,
                                   tokens: dict[str, dict[str, str]]) -> None:
    path = "/api/v1/devices/default/d1/twin/setpoint"
    response = await client.put(path, json={"desired": 33}, headers=tokens["viewer"])
    assert response.status_code == 403
    assert gateway.api.twin("default/d1").properties["setpoint"].desired is None
    response = await client.put(path, json={"desired": 33}, headers=tokens["operator"])
    assert response.status_code == 200, response.text
    assert response.json()["desired"] == 33.0
    await wait_for(lambda: gateway.api.twin("default/d1").properties["setpoint"].reported == 33.0)
    response = await client.get("/api/v1/devices/default/d1", headers=tokens["admin"])
    assert response.json()["twin"]["setpoint"]["reported"] == 33.0
    audit = await gateway.store.audit.recent()
    assert audit[0]["actor"].startswith("token:") and audit[0]["target"] == "default/d1/setpoint"


@pytest.mark.parametrize(("path", "body", "status", "text"), [
    ("/api/v1/devices/default/d1/twin/setpoint", {"desired": 500}, 400, "above the maximum 50"),
    ("/api/v1/devices/default/d1/twin/setpoint", {"desired": "warm"}, 400, "expected a number"),
    ("/api/v1/devices/default/d1/twin/setpoint", {"value": 5}, 400, ""),
    ("/api/v1/devices/default/d1/twin/setpoint", [1, 2], 400, ""),
    ("/api/v1/devices/default/d1/twin/count", {"desired": 5}, 400, "ReadOnly"),
    ("/api/v1/devices/default/d1/twin/nope", {"desired": 5}, 404, "no property"),
    ("/api/v1/devices/default/zz/twin/setpoint", {"desired": 5}, 404, "no device"),
])
async def test_bad_requests_get_clear_errors(client: httpx.AsyncClient, tokens: dict[str, dict[str, str]],
                                             path: str, body: Any, status: int, text: str) -> None:
    response = await client.put(path, json=body, headers=tokens["operator"])
    assert response.status_code == status, response.text
    assert text in response.text


async def test_malformed_json_body(client: httpx.AsyncClient, tokens: dict[str, dict[str, str]]) -> None:
    response = await client.put("/api/v1/devices/default/d1/twin/setpoint", content=b"{not json",
                                headers={**tokens["operator"], "content-type": "application/json"})
    assert response.status_code == 400


DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/api/v1/devices/default/d1/twin/setpoint", '{"desired": ' + DEEP + "}"),
    ("PUT", "/api/v1/devices/default/d1/twin/setpoint", DEEP),
    ("PUT", "/api/v1/devices/default/d1/twin/setpoint", '{"desired": ' + "[" * 65 + "]" * 65 + "}"),
    ("POST", "/api/v1/workloads", '{"kind": "Workload", "name": "w", "spec": ' + DEEP + "}"),
    ("POST", "/api/v1/workloads/default/w/rollback", '{"version": ' + DEEP + "}"),
])
async def test_a_body_nested_too_deep_gets_400(client: httpx.AsyncClient, gateway: Gateway,
                                               tokens: dict[str, dict[str, str]], method: str, path: str,
                                               body: str) -> None:
    response = await client.request(method, path, content=body.encode(),
                                    headers={**tokens["admin"], "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == "request body: nests deeper than 64 levels"
    assert gateway.api.twin("default/d1").properties["setpoint"].desired is None
    # a document as deep as real ones stays fine
    fine = await client.put("/api/v1/devices/default/d1/twin/setpoint", json={"desired": 12},
                            headers=tokens["admin"])
    assert fine.status_code == 200, fine.text


async def test_history_and_status(client: httpx.AsyncClient, gateway: Gateway,
                                  tokens: dict[str, dict[str, str]]) -> None:
    await asyncio.sleep(0.3)
    await gateway.store.flush()
    response = await client.get("/api/v1/devices/default/d1/history/count", params={"window": 60},
                                headers=tokens["viewer"])
    assert response.status_code == 200
    points = response.json()
    assert len(points) >= 2 and [v for _, v in points] == sorted(v for _, v in points)
    response = await client.get("/api/v1/devices/default/d1/history/count", params={"window": -1},
                                headers=tokens["viewer"])
    assert response.status_code == 400
    status = (await client.get("/api/v1/status", headers=tokens["viewer"])).json()
    assert status["devices"]["total"] == 2 and status["node"] == "test-gw"


async def test_openapi_lists_the_contract(client: httpx.AsyncClient, tokens: dict[str, dict[str, str]]) -> None:
    response = await client.get("/schema/openapi.json", headers=tokens["viewer"])
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/devices" in paths
    assert "/api/v1/devices/{namespace}/{name}" in paths
    assert "put" in paths["/api/v1/devices/{namespace}/{name}/twin/{prop}"]


async def test_users_have_argon2_hashes(gateway: Gateway) -> None:
    await add_user(gateway.store, "alice", "operator", "correct horse")
    _role, password_hash = await gateway.store.users.get("alice") or ("", "")
    assert password_hash.startswith("$argon2") and "correct horse" not in password_hash
    principal = await authenticate_user(gateway.store, "alice", "correct horse")
    assert principal.role == "operator"
    with pytest.raises(AuthError):
        await authenticate_user(gateway.store, "alice", "wrong")
    with pytest.raises(AuthError):
        await authenticate_user(gateway.store, "bob", "correct horse")

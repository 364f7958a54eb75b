"""The REST API through the app on the test's own loop (httpx ASGI transport): contracts, roles and bad requests."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import AuthError
from gateway.runtime import Gateway
from gateway.store import db_path
from gateway.testing import store_sql
from gateway.web.app import create_app
from gateway.web.auth import add_user, authenticate_user, create_token
from gateway.web.security import BODY_DEFAULT, BODY_VALUE
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


# --- hostile values and a failing store ----------------------------------------------------------------------------

PANEL = MODEL + """\
---
kind: DeviceModel
name: panel
properties:
  - {name: gain, type: double, access: ReadWrite}
  - {name: label, type: string, access: ReadWrite, max_length: 16}
  - {name: note, type: string, access: ReadWrite}
  - {name: blob, type: bytes, access: ReadWrite}
---
kind: Device
name: p1
model: panel
protocol: {name: virtual}
properties:
  - {name: gain, collect_interval: 50ms, visitor: {generator: memory, initial: 1.0}}
  - {name: label, collect_interval: 50ms, visitor: {generator: memory, initial: ""}}
  - {name: note, collect_interval: 50ms, visitor: {generator: memory, initial: ""}}
  - {name: blob, collect_interval: 50ms, visitor: {generator: memory, initial: ""}}
---
kind: Endpoint
name: cloud
type: rest
---
kind: Endpoint
name: local
type: eventbus
---
kind: Route
name: alarms
source: cloud
source_resource: {path: alarms}
target: local
target_resource: {topic: alarms}
"""


@pytest.fixture
async def panel(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]
                ) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient, dict[str, str]]]:
    """A gateway with an unbounded number, strings and bytes to set, a rest route, and an operator's client."""
    gw: Gateway = await start_gateway(write_config(PANEL + virtual_device("d1", interval="50ms")))
    await wait_for(lambda: gw.api.twin("default/p1").properties["gain"].reported is not None)
    operator = {"Authorization": f"Bearer {await create_token(gw.store, 'operator')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gw.api)),
                                 base_url="http://testserver.local") as client:
        yield gw, client, operator


async def break_inserts(db_file: Path, table: str) -> None:
    """Every insert into `table` fails as a broken database fails (SQLITE_ERROR), not as one refused row (in a
    thread: the gateway's writer on this loop must be able to finish a transaction meanwhile)."""
    await asyncio.to_thread(store_sql, db_file, f"CREATE TRIGGER broken_{table} BEFORE INSERT ON {table} BEGIN "
                            "INSERT INTO nowhere VALUES (1); END")


async def repair_inserts(db_file: Path, table: str) -> None:
    await asyncio.to_thread(store_sql, db_file, f"DROP TRIGGER broken_{table}")


async def test_nan_and_infinities_are_refused_as_desired_values(
        panel: tuple[Gateway, httpx.AsyncClient, dict[str, str]]) -> None:
    """Before, "nan" on a property without both bounds answered 200, stored null, and the NaN the device read back
    broke the rollups of the next minute."""
    gw, client, operator = panel
    path = "/api/v1/devices/default/p1/twin/gain"
    for text in ("nan", " NaN", "inf", "-Infinity"):
        response = await client.put(path, json={"desired": text}, headers=operator)
        assert response.status_code == 400, (text, response.text)
        assert "gain: expected a finite number" in response.json()["detail"]
    assert gw.api.twin("default/p1").properties["gain"].desired is None
    assert (await client.put(path, json={"desired": 1e300}, headers=operator)).status_code == 200
    await wait_for(lambda: gw.api.twin("default/p1").properties["gain"].reported == 1e300)
    assert (await client.get("/healthz")).json() == {"status": "ok", "node": "test-gw"}


async def test_a_failing_store_shows_in_healthz_and_status_and_loses_no_reading(
        panel: tuple[Gateway, httpx.AsyncClient, dict[str, str]]) -> None:
    """Before, a failing writer backed off up to 30 s while /healthz said ok, and a message post answered 400."""
    gw, client, operator = panel
    db_file = db_path(gw.data_dir)
    await break_inserts(db_file, "reports")
    await wait_for(lambda: not gw.store.health.ok)
    failing = await client.get("/healthz")
    assert failing.status_code == 503
    assert failing.json()["status"] == "failing" and "no such table" in failing.json()["store"]["reports"]
    status = (await client.get("/api/v1/status", headers=operator)).json()["store"]
    assert status["state"] == "failing" and "reports" in status["failing"]
    message = await client.post("/api/v1/messages/alarms", content=b'{"level": "high"}', headers=operator)
    # 503 when its flush met the failing reports; 202 when it was committed alone, between two failing flushes of
    # reports (the writer commits as soon as it is free): either way it is not lost (below)
    assert message.status_code == 202 or (
        message.status_code == 503 and "queued but not stored yet" in message.json()["detail"]), message.text
    seen = gw.api.twin("default/d1").properties["count"].reported
    await wait_for(lambda: gw.api.twin("default/d1").properties["count"].reported >= seen + 20)  # a second on
    await repair_inserts(db_file, "reports")
    await wait_for(lambda: gw.store.health.ok, timeout=5)  # retried within a second, not after 30
    assert (await client.get("/healthz")).status_code == 200
    history = [value for _, value in await gw.store.history.values("default/d1", "count", 0, time.time() + 1)]
    assert history == list(range(history[0], history[-1] + 1))  # the readings of the failure waited, none lost
    assert history[-1] >= seen + 20
    assert len(await gw.store.outboxes.batch("route:default/alarms", 0, 10)) == 1


async def test_a_store_whose_outbox_and_reports_fail_recovers_and_keeps_both(
        panel: tuple[Gateway, httpx.AsyncClient, dict[str, str]]) -> None:
    """Inserts into the outbox and the reports both fail, then work again: the writer recovers, the message posted
    meanwhile is in its outbox once and no reading of the failure is missing."""
    gw, client, operator = panel
    db_file = db_path(gw.data_dir)
    await break_inserts(db_file, "outbox")
    await break_inserts(db_file, "reports")
    posted = await client.post("/api/v1/messages/alarms", content=b'{"level": "high"}', headers=operator)
    assert posted.status_code == 503 and "queued but not stored yet" in posted.json()["detail"], posted.text
    await wait_for(lambda: not gw.store.health.ok, timeout=10)
    seen = gw.api.twin("default/d1").properties["count"].reported
    await wait_for(lambda: gw.api.twin("default/d1").properties["count"].reported >= seen + 20)
    await repair_inserts(db_file, "outbox")
    await repair_inserts(db_file, "reports")
    await wait_for(lambda: gw.store.health.ok, timeout=10)
    assert (await client.get("/healthz")).status_code == 200
    assert len(await gw.store.outboxes.batch("route:default/alarms", 0, 10)) == 1
    history = [value for _, value in await gw.store.history.values("default/d1", "count", 0, time.time() + 1)]
    assert history == list(range(history[0], history[-1] + 1)) and history[-1] >= seen + 20


async def test_a_failing_part_of_the_store_never_fails_the_others(
        panel: tuple[Gateway, httpx.AsyncClient, dict[str, str]]) -> None:
    """The latest values (written every few seconds after a flush) fail; reports and messages are still committed."""
    gw, client, operator = panel
    db_file = db_path(gw.data_dir)
    await break_inserts(db_file, "reported")
    deadline = time.monotonic() + 8
    while "reported values" not in gw.store.health.failing:
        assert time.monotonic() < deadline, "the latest values were not written within 8 s"
        response = await client.post("/api/v1/messages/alarms", content=b"{}", headers=operator)
        assert response.status_code == 202, response.text
        await asyncio.sleep(0.2)
    assert (await client.get("/healthz")).status_code == 503
    written = gw.store.history.values_written
    await wait_for(lambda: gw.store.history.values_written > written + 50)  # readings still committed
    await repair_inserts(db_file, "reported")
    await wait_for(lambda: gw.store.health.ok, timeout=8)


async def test_strings_and_bytes_are_held_to_their_max_length(
        panel: tuple[Gateway, httpx.AsyncClient, dict[str, str]]) -> None:
    """Before, a string had no limit: a 9 MB desired value went into every report, the history and the outboxes."""
    gw, client, operator = panel
    twin = "/api/v1/devices/default/p1/twin"
    cases = [("label", "x" * 16, "x" * 17, "label: 17 characters, above the max_length 16"),
             ("note", "é" * 1024, "é" * 1025, "note: 1025 characters, above the max_length 1024"),
             ("blob", base64.b64encode(bytes(4096)).decode(), base64.b64encode(bytes(4097)).decode(),
              "blob: 4097 bytes, above the max_length 4096")]
    for prop, longest, too_long, reason in cases:
        assert (await client.put(f"{twin}/{prop}", json={"desired": longest}, headers=operator)).status_code == 200
        refused = await client.put(f"{twin}/{prop}", json={"desired": too_long}, headers=operator)
        assert refused.status_code == 400 and refused.json()["detail"] == reason
    props = gw.api.twin("default/p1").properties
    assert (props["label"].desired, props["note"].desired, props["blob"].desired) == ("x" * 16, "é" * 1024,
                                                                                     bytes(4096))


async def test_request_bodies_are_limited_per_route(panel: tuple[Gateway, httpx.AsyncClient, dict[str, str]]) -> None:
    """Before, every route read bodies up to Litestar's 10 MB: a 9 MB desired value was taken whole."""
    gw, client, operator = panel
    path = "/api/v1/devices/default/p1/twin/note"
    huge = await client.put(path, json={"desired": "x" * (9 << 20)}, headers=operator)
    assert huge.status_code == 413
    assert huge.json()["detail"] == f"the request body is larger than the {BODY_VALUE} bytes PUT {path} takes"
    assert gw.api.twin("default/p1").properties["note"].desired is None
    too_long_message = await client.post("/api/v1/messages/alarms", content=bytes((1 << 20) + 1), headers=operator)
    assert too_long_message.status_code == 413
    login = await client.post("/login", content=b"username=" + b"a" * BODY_DEFAULT,
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert login.status_code == 413
    # every route that takes a body has a limit of its own or the app's, far below Litestar's 10 MB
    app = create_app(gw.api)
    limits = {(method, route.path): handler.resolve_request_max_body_size()
              for route in app.routes for handler in getattr(route, "route_handlers", ())
              for method in handler.http_methods if method in ("POST", "PUT", "PATCH", "DELETE")}
    # but a file for the outbox: streamed to disk, never read whole, and bounded by files.max_upload (tests/files)
    streamed = {("PUT", "/api/v1/files/{name:str}")}
    assert limits and all(limit is not None and (limit <= 8 << 20 or key in streamed)
                          for key, limit in limits.items()), limits
    assert limits[("PUT", "/api/v1/devices/{namespace:str}/{name:str}/twin/{prop:str}")] == BODY_VALUE < 1 << 20

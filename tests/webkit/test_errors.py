"""Errors as both apps answer them: one body shape (the ErrorBody their OpenAPI documents), a request id on every
response, unexpected failures logged with their traceback under that id, 405 with Allow, odd asset paths 404."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest
from litestar import get
from litestar.testing import TestClient

from gateway.hookspecs import hookimpl
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import create_token
from gateway.webkit.errors import ERROR_SCHEMA, INTERNAL_ERROR, REQUEST_ID_HEADER
from tests.registry.test_access import run
from tests.test_runtime import MODEL

ODD_ASSET_PATHS = ["/static/%00", "/static/a%00b.css", "/static/" + "a" * 300, "/static/style.css/x",
                   "/static/" + "/".join(["d" * 200] * 30), "/static/%2e%2e/%2e%2e/etc/passwd"]


class FailingRoutes:
    """A plugin whose API route and page fail the way a bug would."""

    @hookimpl
    def register_routes(self) -> list[Any]:
        @get("/api/v1/failing", sync_to_thread=False)
        def failing_api() -> None:
            raise RuntimeError("a bug in a handler")

        @get("/failing", sync_to_thread=False, include_in_schema=False)
        def failing_page() -> None:
            raise KeyError("a bug in a page")

        return [failing_api, failing_page]


@pytest.fixture
async def failing_node(plugin_manager: pluggy.PluginManager, write_config: Callable[[str], Path],
                       start_gateway: Callable[..., Any]) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    plugin_manager.register(FailingRoutes(), name="tests.failing")
    gateway: Gateway = await start_gateway(write_config(MODEL))
    token = {"Authorization": f"Bearer {await create_token(gateway.store, 'admin')}"}
    transport = httpx.ASGITransport(app=create_app(gateway.api), client=("127.0.0.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=10) as client:
        yield client, token


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == set(ERROR_SCHEMA["required"]), body  # type: ignore[arg-type]
    assert body["status_code"] == status and isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers[REQUEST_ID_HEADER]
    return body


async def test_an_unexpected_failure_is_logged_with_the_id_its_answer_carries(
        failing_node: tuple[httpx.AsyncClient, dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    client, token = failing_node
    with caplog.at_level(logging.ERROR, logger="gateway.webkit.errors"):
        api = await client.get("/api/v1/failing", headers=token)
        page = await client.get("/failing", headers=token)
    body = assert_error_body(api, 500)
    assert body["detail"] == INTERNAL_ERROR and "a bug" not in api.text  # the reason stays in the log
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    page_id = page.headers[REQUEST_ID_HEADER]
    assert page_id in page.text and page_id != body["request_id"]
    records = {record.getMessage().split("(request ")[1][:16]: record for record in caplog.records}
    assert set(records) == {body["request_id"], page_id}
    assert "GET /api/v1/failing" in records[body["request_id"]].getMessage()
    assert "RuntimeError: a bug in a handler" in records[body["request_id"]].getMessage()
    assert records[body["request_id"]].exc_info is not None  # the traceback is logged
    assert "KeyError" in records[page_id].getMessage() and records[page_id].exc_info is not None


async def test_every_node_answer_carries_its_own_request_id(node_client: httpx.AsyncClient) -> None:
    answers = [await node_client.get(path) for path in ("/healthz", "/login", "/static/style.css", "/nope",
                                                        "/api/v1/devices", "/")]
    ids = [answer.headers.get(REQUEST_ID_HEADER) for answer in answers]
    assert all(ids) and len(set(ids)) == len(ids)
    assert_error_body(answers[4], 401)


def test_every_registry_answer_carries_its_own_request_id(registry_client: TestClient[Any]) -> None:
    answers = [registry_client.get(path) for path in ("/healthz", "/login", "/static/style.css", "/api/v1/nodes",
                                                      "/api/v1/nope")]
    ids = [answer.headers.get(REQUEST_ID_HEADER) for answer in answers]
    assert all(ids) and len(set(ids)) == len(ids)
    assert_error_body(answers[3], 401)
    assert_error_body(answers[4], 404)


@pytest.mark.parametrize("path", ODD_ASSET_PATHS)
async def test_node_asset_paths_the_file_system_cannot_look_up_are_404(node_client: httpx.AsyncClient,
                                                                       path: str) -> None:
    answer = await node_client.get(path)  # anonymous, as assets are public
    assert answer.status_code == 404 and answer.headers[REQUEST_ID_HEADER]


@pytest.mark.parametrize("path", ODD_ASSET_PATHS)
def test_registry_asset_paths_the_file_system_cannot_look_up_are_404(registry_client: TestClient[Any],
                                                                     path: str) -> None:
    assert_error_body(registry_client.get(path), 404)


async def test_node_405_answers_say_what_is_allowed(node_client: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/healthz"), ("DELETE", "/api/v1/devices"), ("PUT", "/static/style.css"),
                         ("PATCH", "/login")):
        answer = await node_client.request(method, path)
        assert answer.status_code == 405, (method, path, answer.status_code)
        assert answer.headers.get("allow"), (method, path)
        assert method not in answer.headers["allow"]


def test_registry_405_answers_say_what_is_allowed(registry_client: TestClient[Any]) -> None:
    for method, path in (("POST", "/healthz"), ("DELETE", "/api/v1/ca"), ("PUT", "/static/style.css"),
                         ("GET", "/api/v1/join")):
        answer = registry_client.request(method, path)
        assert answer.status_code == 405, (method, path, answer.status_code)
        assert answer.headers.get("allow") and method not in answer.headers["allow"], (method, path)
        assert_error_body(answer, 405)


async def test_node_error_bodies_are_the_ones_its_openapi_documents(
        failing_node: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, token = failing_node
    document = (await client.get("/schema/openapi.json", headers=token)).json()
    assert_documents_errors(document)
    assert_error_body(await client.get("/api/v1/devices/default/nope", headers=token), 404)
    assert_error_body(await client.put("/api/v1/devices/default/nope/twin/x", json={}, headers=token), 400)
    assert_error_body(await client.get("/api/v1/devices/default/x/history/p?window=-1", headers=token), 400)
    assert_error_body(await client.post("/api/v1/messages/nowhere", content=b"{}", headers=token), 404)


def test_registry_error_bodies_are_the_ones_its_openapi_documents(registry_client: TestClient[Any],
                                                                  tmp_path: Path) -> None:
    token = {"Authorization": "Bearer " + run(["registry", "token", "create", "--role", "viewer", "--data-dir",
                                               str(tmp_path / "registry")]).stdout.strip()}
    document = registry_client.get("/schema/openapi.json", headers=token).json()
    assert_documents_errors(document)
    assert_error_body(registry_client.get("/api/v1/nodes/nope", headers=token), 404)
    assert_error_body(registry_client.post("/api/v1/join", json={"token": 5}), 400)
    assert_error_body(registry_client.post("/api/v1/join", json={"token": "a.b", "csr": "x"}), 403)
    assert_error_body(registry_client.post("/api/v1/groups", json={"name": "g"}, headers=token), 403)
    assert_error_body(registry_client.post("/api/v1/heartbeat", json={}), 401)


def assert_documents_errors(document: dict[str, Any]) -> None:
    assert document["components"]["schemas"]["ErrorBody"] == ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, response in operation["responses"].items():
                if code == "default" or code.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == reference, (method, path, code)
            assert "default" in operation["responses"], (method, path)


def test_an_options_answer_lists_every_method_of_its_path(registry_client: TestClient[Any]) -> None:
    # GET and POST of these paths come from handlers registered apart
    for path, methods in (("/api/v1/documents", {"GET", "POST", "OPTIONS"}),
                          ("/api/v1/nodes/x", {"GET", "PATCH", "DELETE", "OPTIONS"})):
        answer = registry_client.options(path)
        assert answer.status_code == 204
        assert set(answer.headers["allow"].split(", ")) == methods, (path, answer.headers["allow"])

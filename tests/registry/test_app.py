"""The registry app as a whole: its OpenAPI document is for registry users only, and no documentation UI that
loads scripts from a CDN is served."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from tests.registry.conftest import Registry
from tests.registry.test_access import add_user, api, cli, join, login, token

UI_PATHS = ("/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc", "/schema/oauth2-redirect.html")


def test_the_openapi_document_needs_a_user_and_no_ui_loads_cdn_scripts(registry: Registry, tmp_path: Path) -> None:
    viewer = cli(registry, "token", "create").stdout.strip()
    with api(registry) as anonymous:
        refused = anonymous.get("/schema/openapi.json")
        assert refused.status_code == 401 and "API token" in refused.json()["detail"]
        assert anonymous.get("/schema").status_code == 401
        assert anonymous.get("/api/v1/ca").status_code == 200  # what a joining node needs stays public
    with api(registry, viewer) as client:
        document = client.get("/schema/openapi.json")
        assert document.status_code == 200
        assert {"/api/v1/join", "/api/v1/nodes"} <= set(document.json()["paths"])
        assert client.get("/schema").headers["content-type"].startswith("application/")
        for path in UI_PATHS:
            answer = client.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert "cdn" not in answer.text.lower()
    with api(registry, "abcd.not-a-token") as bad:
        assert bad.get("/schema/openapi.json").status_code == 401
    add_user(registry, tmp_path, "ana")
    with login(registry, "ana") as session:  # a logged-in user of the pages reads it too
        assert session.get("/schema/openapi.json").status_code == 200
        session.cookies.clear()
        assert session.get("/schema/openapi.json").status_code == 401


DEEP = b"[" * 3000 + b"]" * 3000


def test_a_body_nested_too_deep_gets_400_and_the_node_beats_on(registry: Registry, tmp_path: Path) -> None:
    assert join(registry, token(registry), tmp_path / "gw", "--name", "gw-a").returncode == 0
    directory = tmp_path / "gw" / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as node:
        for body in (b'{"info": {"x": ' + DEEP + b"}}", DEEP, b'{"twins": ' + DEEP + b"}"):
            refused = node.post("/api/v1/heartbeat", content=body, headers=json_type)
            assert refused.status_code == 400, refused.text
            assert refused.json() == {"status_code": 400, "detail": "request body: nests deeper than 64 levels",
                                      "request_id": refused.headers["x-request-id"]}
        assert node.post("/api/v1/heartbeat", json={"info": {"version": "9.9"}}).status_code == 200
    admin = cli(registry, "token", "create", "--role", "admin", "--scope", "platform").stdout.strip()
    with api(registry, admin) as client:
        for path in ("/api/v1/documents", "/api/v1/groups", "/api/v1/join-tokens"):
            refused = client.post(path, content=DEEP, headers=json_type)
            assert refused.status_code == 400 and "nests deeper" in refused.json()["detail"], (path, refused.text)
    assert registry.nodes()["gw-a"]["version"] == "9.9"

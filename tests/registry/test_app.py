"""The registry app as a whole: its OpenAPI document is for registry users only, and no documentation UI that
loads scripts from a CDN is served."""

from __future__ import annotations

from pathlib import Path

from tests.registry.conftest import Registry
from tests.registry.test_access import add_user, api, cli, login

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

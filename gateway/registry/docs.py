"""Generates docs/registry-api.md from the registry app's routes: `python -m gateway.registry.docs`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from gateway.registry.app import create_app
from gateway.webkit.routes import app_routes

DOCS = Path(__file__).resolve().parents[2] / "docs"


def registry_api_markdown() -> str:
    out = ["# Registry API", "",
           "Generated from the registry app by `python -m gateway.registry.docs`; do not edit. The node's own REST API "
           "is in [rest-api.md](rest-api.md)."]
    api, pages = registry_route_table()
    out += ["",
            "`fieldgate registry serve` (TLS only). A route for people takes `Authorization: Bearer <token>` "
            "(`fieldgate registry token create --role R [--scope S]`) and sees only what lies in the token's scope; "
            "its role must hold the permission the route names (a 403 names the permission and the built-in roles "
            "that hold it); a route for nodes takes the node's certificate (mutual TLS). Nodes also open the channel, "
            "a WebSocket at `/api/v1/channel` (mutual TLS; on a listener of its own with `registry serve "
            "--channel-listen HOST:PORT`), whose frames are `gateway/wire.py`'s channel section (README: How a "
            "node talks to the registry).", "",
            "| method | path | caller | summary |", "| --- | --- | --- | --- |"]
    out += [f"| {method} | `{path}` | {caller} | {summary} |" for method, path, caller, summary in api]
    out += ["", "## Pages of the registry", "",
            "Server-rendered for registry users (`fieldgate registry user add`), with the session cookie of `/login`; "
            "every form carries the session's CSRF token; a role that holds none of the page's permissions gets "
            "403 (\"session\": any logged-in user).", "",
            "| method | path | permission | summary |", "| --- | --- | --- | --- |"]
    out += [f"| {method} | `{path}` | {role} | {summary} |" for method, path, role, summary in pages]
    return "\n".join(out) + "\n"


def registry_route_table() -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """(method, path, caller, summary) of the registry's API routes and of its pages."""
    with tempfile.TemporaryDirectory() as directory:  # the app makes its CA in its data dir
        app = create_app(Path(directory))
    api: list[tuple[str, str, str, str]] = []
    pages: list[tuple[str, str, str, str]] = []
    for method, path, handler in app_routes(app):
        if path.startswith(("/schema", "/static")):
            continue
        summary = handler.summary or ""
        if handler.include_in_schema is False:
            needed = handler.opt.get("page_permissions")
            if needed is None:
                permission = handler.opt.get("session_permission", "anyone")
            else:
                permission = " or ".join(needed) or "session"
            pages.append((method, path, permission, summary))
            continue
        node = path.startswith(("/api/v1/nodes/self", "/api/v1/heartbeat", "/api/v1/join/batch")) or (
            path.startswith("/api/v1/upgrades/") and "/wheels/" in path)
        public = path in ("/healthz", "/api/v1/ca", "/api/v1/join")
        api.append((method, path, "public" if public else "node" if node else "API token", summary))
    return api, pages


GENERATED = {"registry-api.md": registry_api_markdown}


def main(argv: list[str]) -> int:
    for name, generate in GENERATED.items():
        (DOCS / name).write_text(generate(), encoding="utf-8")
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

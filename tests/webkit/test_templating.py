"""The shared templates, filters and static assets: each app's own templates first, the web kit's behind them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import TestClient

from gateway.webkit.pages import Site
from gateway.webkit.templating import STATIC, environment

SITE = Site(title="test site", name="test", home="the start")


async def test_both_apps_serve_the_shared_styles_at_the_same_path(node_client: httpx.AsyncClient,
                                                                  registry_client: TestClient[Any]) -> None:
    node_css, registry_css = await node_client.get("/static/app.css"), registry_client.get("/static/app.css")
    assert (node_css.status_code, registry_css.status_code) == (200, 200)
    assert node_css.content == registry_css.content == (STATIC / "app.css").read_bytes()
    assert (await node_client.get("/static/app.js")).status_code == 200  # the node's own scripts stay the node's
    assert registry_client.get("/static/app.js").status_code == 404


def test_an_apps_template_comes_first_and_the_shared_one_stays_reachable(tmp_path: Path) -> None:
    (tmp_path / "error.html").write_text('{% extends "webkit/error.html" %}{% block title %}Oops{% endblock %}')
    env = environment(tmp_path)
    html = env.get_template("error.html").render(site=SITE, code=404, message="gone", nav=[], flashes=[])
    assert "<title>Oops · test site</title>" in html and "<h1>Not found</h1>" in html and "Back to the start" in html
    login = env.get_template("login.html").render(site=SITE, nav=[], flashes=[], next="/", login_csrf="t")
    assert "<h1>Log in</h1>" in login and re.search(r'<link rel="stylesheet" href="/static/app.css\?v=[0-9a-f]{12}">',
                                                    login)


def test_times_are_local_on_the_node_and_utc_at_the_registry(tmp_path: Path) -> None:
    template = "{{ none|ts }} {{ 86400|ts }} {{ none|ago }}"
    assert environment(tmp_path, utc=True).from_string(template).render() == "\u2013 1970-01-02 00:00:00 UTC never"
    assert environment(tmp_path).from_string(template).render().endswith(":00 never")


def test_a_state_has_one_badge_colour_in_both_uis(tmp_path: Path) -> None:
    from gateway.web.pages.workloads import badge as node_workload_badge

    macro = environment(tmp_path).from_string('{% from "macros.html" import state_badge %}{{ state_badge(s) }}')

    def shown(state: str) -> str:
        html = macro.render(s=state)
        return html.split('class="badge ', 1)[1].split('"', 1)[0]

    expected = {"online": "online", "healthy": "online", "running": "online", "completed": "online",
                "in sync": "online", "unhealthy": "unhealthy", "degraded": "unhealthy", "pending": "unhealthy",
                "restarting": "unhealthy", "offline": "offline", "failed": "offline", "stopped": "offline",
                "rejected": "offline", "unknown": "unknown", "joined": "unknown"}
    assert {state: shown(state) for state in expected} == expected
    for state in ("running", "completed", "failed", "stopped", "degraded", "restarting", "pending", "ready"):
        assert node_workload_badge(state) == shown(state), state  # the local UI's workload pages, the same colours

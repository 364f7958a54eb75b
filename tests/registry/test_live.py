"""The registry pages' live data on a real TLS registry: the node states stream (counts and rows of the user's scope,
changes only, ended at logout, a session needed) and a node's samples for its plots."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.registry.conftest import Registry
from tests.registry.test_access import add_user, heartbeat, login, trust, two_workspaces


def stream_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event name, data) of each event of a stream; comments are left out."""
    name, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield name, json.loads(data) if data.startswith("{") else data
            name, data = "message", ""


def test_the_node_states_stream_follows_the_users_scope_and_ends_at_logout(registry: Registry,
                                                                          tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)  # node a in workspace default, b in plant-b; neither has beaten yet
    add_user(registry, tmp_path, "vic")  # a viewer of workspace default
    with httpx.Client(base_url=registry.url, verify=trust(registry), timeout=10) as anonymous:
        assert anonymous.get("/events/nodes").status_code == 401
        assert anonymous.get("/nodes/a/metrics").status_code == 401
    with login(registry, "vic") as pages, pages.stream("GET", "/events/nodes") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers  # asked for gzip (httpx does), events go as they are
        events = stream_events(response)
        name, first = next(events)
        assert name == "update"
        assert first["counts"] == {"total": 1, "healthy": 0, "offline": 0, "joined": 1, "paused": 0}
        assert set(first["nodes"]) == {"a"} and first["nodes"]["a"]["status"] == "joined"
        heartbeat(registry, tmp_path / "b")  # not in vic's scope: nothing to tell
        heartbeat(registry, tmp_path / "a", version="4.0.0")
        _, second = next(events)
        assert second["counts"]["healthy"] == 1 and second["counts"]["joined"] == 0
        assert set(second["nodes"]) == {"a"}
        assert second["nodes"]["a"]["status"] == "healthy" and second["nodes"]["a"]["version"] == "4.0.0"

        csrf = re.search(r'name="csrf-token" content="([^"]+)"', pages.get("/groups").text)
        assert csrf
        ended: list[Any] = []
        reader = threading.Thread(target=lambda: ended.extend(event for event in events if event[0] == "closed"),
                                  daemon=True)
        reader.start()
        assert pages.post("/logout", data={"_csrf": csrf.group(1)}).status_code == 303
        reader.join(timeout=15)
        assert ended and "session ended" in ended[0][1]


def test_a_nodes_plots_read_its_samples_with_the_page_session(registry: Registry, tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)
    add_user(registry, tmp_path, "vic")
    directory = tmp_path / "a" / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as node:
        beat = node.post("/api/v1/heartbeat", json={"info": {"version": "1", "metrics": {"cpu_percent": 12.5}}})
        assert beat.status_code == 200
    with login(registry, "vic") as pages:
        samples = pages.get("/nodes/a/metrics", params={"window": "15m"})
        assert samples.status_code == 200, samples.text[:300]
        assert samples.headers["content-type"].startswith("application/json"), samples.text[:300]
        body = samples.json()
        assert body["until"] - body["since"] == 900 and body["series"]["cpu_percent"] == [12.5]
        assert len(body["times"]) == 1
        assert pages.get("/nodes/b/metrics").status_code == 404  # outside vic's scope, as if it did not exist
        wrong = pages.get("/nodes/a/metrics", params={"window": "2d"})
        assert wrong.status_code == 400 and "15m, 1h, 6h, 24h" in wrong.json()["detail"]
        page = pages.get("/nodes/a")
        assert 'data-plot-src="/nodes/a/metrics"' in page.text and "uplot.min.js?v=" in page.text
        assert page.text.count("<svg") == 4  # what shows without script

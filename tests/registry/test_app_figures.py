"""Per-instance app figures at the registry: kept per minute (SQLite and PostgreSQL) and dropped after 24 h, a
heartbeat's figures and allocatable checked field by field, the metrics API and the node page of a real TLS
registry. The end-to-end case (a real gateway's app burning CPU and memory): tests/registry/test_app_figures_e2e.py."""

from __future__ import annotations

import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx

from gateway.registry.monitoring import MINUTE, WINDOW, app_plots_html, app_samples
from gateway.registry.store import RegistryStore
from gateway.registry.store.samples import figures_statements
from gateway.wire import APP_SERIES, AppFigures
from tests.registry.conftest import Registry, join
from tests.registry.test_access import add_user, api, cli, login, token

SVG = "{http://www.w3.org/2000/svg}"



async def test_figures_are_kept_per_instance_and_minute_for_24_hours(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {}, 1.0)
        await store.add_node("gw-2", "cd", {}, 1.0)
        old = time.time() - WINDOW - 5 * MINUTE
        await store.database.transaction(figures_statements("gw-1", [AppFigures("default/app", "app-1-0", 99.0)],
                                                            old))
        for cpu, memory in ((10.0, 100.0), (30.0, 300.0)):
            await store.heartbeat("gw-1", {}, [AppFigures("default/app", "app-1-0", cpu, memory, 1.0, 2.0),
                                               AppFigures("default/other", "other-1-0", 50.0)])
        # one instance twice in a heartbeat (a node's bug): counted once, not refused by the database
        await store.heartbeat("gw-2", {}, [AppFigures("default/app", "app-3-0", 10.0, 100.0),
                                           AppFigures("default/app", "app-3-0", 70.0, 700.0)])
        many = [AppFigures("default/many", f"many-1-{i}", float(i)) for i in range(120)]  # three INSERTs
        assert len(figures_statements("gw-3", many, time.time())) == 4
        await store.heartbeat("gw-2", {}, many)
        await store.heartbeat("gw-2", {})  # a node without apps, or one before figures

        on_node = await app_samples(store, 0.0, node="gw-1")
        assert [i["key"] for i in on_node["instances"]] == ["gw-1/app-1-0", "gw-1/other-1-0"]
        assert 1 <= len(on_node["times"]) <= 2  # the day-old bucket is gone
        cpu = [v for v in on_node["series"]["cpu_percent@gw-1/app-1-0"] if v is not None]
        assert cpu == [20.0] or sorted(cpu) == [10.0, 30.0]
        latest = on_node["instances"][0]["latest"]
        assert latest["net_rx_bps"] is None and latest["memory_bytes"] in (200.0, 300.0)
        assert on_node["instances"][1]["latest"]["memory_bytes"] is None

        app = await app_samples(store, 0.0, workload="default/app")
        assert {i["key"] for i in app["instances"]} == {"gw-1/app-1-0", "gw-2/app-3-0"}
        assert next(i for i in app["instances"] if i["node"] == "gw-2")["latest"]["cpu_percent"] == 70.0
        assert len((await app_samples(store, 0.0, workload="default/many"))["instances"]) == 120
        assert set(app["series"]) == {f"{name}@{key}" for name in APP_SERIES
                                      for key in ("gw-1/app-1-0", "gw-2/app-3-0")}
        only = await app_samples(store, 0.0, workload="default/app", nodes={"gw-2"})
        assert [i["key"] for i in only["instances"]] == ["gw-2/app-3-0"]
        assert (await app_samples(store, time.time() + 120, node="gw-1"))["instances"] == []

        html, instances = await app_plots_html(store, "24h", source="/nodes/gw-1/apps/metrics", node="gw-1",
                                               windows={"1h": 3600.0, "24h": 86400.0})
        plots = ET.fromstring(html)
        titles = [s.get("aria-label", "").split(":")[0] for s in plots.iter(f"{SVG}svg")]
        assert titles == ["CPU (% of a core)", "Memory", "Disk I/O"], "no network figures: no network plot"
        figures = plots.findall("figure")
        assert {f.get("data-plot-src") for f in figures} == {"/nodes/gw-1/apps/metrics"}
        assert figures[0].get("data-plot-series") == ("cpu_percent@gw-1/app-1-0:app-1-0 "
                                                      "cpu_percent@gw-1/other-1-0:other-1-0")
        assert [a.get("href") for a in plots.iter("a")] == ["?window=1h", "?window=24h"]
        assert len(instances) == 2 and len(html) < 20000
        assert await app_plots_html(store, "1h", source="x", node="gw-9") == ("", [])

        await store.database.transaction(figures_statements("gw-2", [], time.time() + WINDOW + 2 * MINUTE, {}))
        assert await store.database.rows("SELECT COUNT(*) FROM app_metrics WHERE node=?", "gw-2") == [(0,)], \
            "a node without apps any more: its old buckets go a day later"
        await store.remove_node("gw-1")
        assert await store.database.rows("SELECT COUNT(*) FROM app_metrics WHERE node=?", "gw-1") == [(0,)]


def node_client(registry: Registry, node_dir: Path) -> httpx.Client:
    directory = node_dir / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    return httpx.Client(base_url=registry.url, verify=context, timeout=10)


def test_heartbeat_figures_reach_the_api_and_the_node_page_and_bad_ones_are_named(
        registry: Registry, tmp_path: Path) -> None:
    assert join(registry, token(registry), tmp_path / "n", "--name", "gw-1").returncode == 0
    good: dict[str, Any] = {"info": {"version": "9.9.9"},
                            "figures": [["default/app", "app-1-0", 87.5, 52428800, 0, 4096, None, None],
                                        ["default/app", "app-2-0", 1.5]],
                            "allocatable": {"cpu": 2.5, "memory": 4294967296, "accelerators": {"vendor.com/npu": 1}}}
    with node_client(registry, tmp_path / "n") as node:
        assert node.post("/api/v1/heartbeat", json=good).status_code == 200
        newer = {"info": {}, "figures": [["default/newer", "newer-1-0", 1, 2, 3, 4, 5, 6, "a later figure"]],
                 "allocatable": {"cpu": 1, "memory": 2, "pods": 110}}  # what a newer node may add is ignored
        assert node.post("/api/v1/heartbeat", json=newer).status_code == 200, "a newer node's heartbeat is taken"
        assert node.post("/api/v1/heartbeat", json=good).status_code == 200
        for field, value, where in (
                ("figures", [["default/app", "app-1-0", -1]], "figures[0][2]"),
                ("figures", [["default/app", "app-1-0", 1e300]], "figures[0][2]"),
                ("figures", [["default/app", "x" * 301]], "figures[0][1]"),
                ("figures", [["default/app", "a", "lots"]], "figures[0][2]"),
                ("figures", [["default/app", "a"]] * 501, "figures"),
                ("allocatable", {"cpu": "many", "memory": 1}, "allocatable.cpu"),
                ("allocatable", {"cpu": 1}, "memory"),
                ("allocatable", {"cpu": 1, "memory": 1, "accelerators": {"gpu": -1}},
                 "allocatable.accelerators")):
            refused = node.post("/api/v1/heartbeat", json={"info": {}, field: value})
            assert refused.status_code == 400, (field, value, refused.text)
            assert where in refused.text, (where, refused.text)
    viewer = cli(registry, "token", "create", "--role", "viewer").stdout.strip()
    with api(registry, viewer) as client:
        answer = client.get("/api/v1/nodes/gw-1/apps/metrics").json()
        assert [i["instance"] for i in answer["instances"]] == ["app-1-0", "app-2-0", "newer-1-0"]
        assert answer["instances"][0]["latest"] == {"cpu_percent": 87.5, "memory_bytes": 52428800.0,
                                                    "disk_read_bps": 0.0, "disk_write_bps": 4096.0,
                                                    "net_rx_bps": None, "net_tx_bps": None}
        assert client.get("/api/v1/nodes/gw-9/apps/metrics").status_code == 404
        assert client.get("/api/v1/nodes/gw-1/apps/metrics", params={"since": "soon"}).status_code == 400
        # a workload the registry placed nowhere in the caller's sight is not found, whatever a node reported
        assert client.get("/api/v1/workloads/default/app/metrics").status_code == 404
    add_user(registry, tmp_path, "vera", "--role", "viewer")
    with login(registry, "vera") as browser:
        page = browser.get("/nodes/gw-1")
        assert page.status_code == 200
        assert 'id="node-allocatable">2.5 CPU, 4.0 GiB memory, 1 vendor.com/npu<' in page.text
        assert '<tr data-instance="app-1-0"><th>app-1-0</th><td data-figure="cpu_percent" data-value="87.5">88 %' \
            in page.text
        assert 'data-plot-src="/nodes/gw-1/apps/metrics"' in page.text
        data = browser.get("/nodes/gw-1/apps/metrics", params={"window": "15m"})
        assert data.status_code == 200 and data.json()["series"]["cpu_percent@gw-1/app-1-0"][-1] == 87.5
        assert browser.get("/nodes/gw-1/apps/metrics", params={"window": "2d"}).status_code == 400

"""The recent log: the ring and its context fields, queries, GET /api/v1/logs and the Logs page."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import JsonFormatter
from gateway.errors import ConfigError
from gateway.logs import ContextFilter, LogQuery, LogRing, log_context, log_ring
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import add_user, create_token
from tests.test_runtime import MODEL, misbehaving_device, virtual_device, wait_for
from tests.web.conftest import PASSWORD, Browser


@pytest.fixture
def ring() -> Iterator[tuple[LogRing, logging.Logger]]:
    """A small ring on a logger of its own (with a plugin's module named), taking debug and up."""
    ring = LogRing(size=5)
    ring.addFilter(ContextFilter({"fieldgate_acme": "acme"}))
    logger = logging.getLogger("fieldgate-test-logs")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(ring)
    yield ring, logger
    logger.removeHandler(ring)


def test_records_carry_context_fields_tracebacks_and_ids(ring: tuple[LogRing, logging.Logger]) -> None:
    ring_, logger = ring
    with log_context(device="default/boiler-1"):
        logger.warning("read failed: %s", "timeout")
        with log_context(sink="route:default/up", route="default/up"):
            logger.info("inner")
        logger.error("explicit", extra={"device": "default/other"})  # extra= wins over the context
    logger.debug("outside")
    try:
        raise KeyError("oops")
    except KeyError:
        logger.exception("bug in %s", "plugin")
    entries = list(ring_.entries)
    assert [e.id for e in entries] == [1, 2, 3, 4, 5]
    assert (entries[0].device, entries[0].message, entries[0].level) == ("default/boiler-1",
                                                                        "read failed: timeout", "warning")
    assert (entries[1].device, entries[1].sink, entries[1].route) == ("default/boiler-1", "route:default/up",
                                                                      "default/up")
    assert entries[2].device == "default/other"
    assert entries[3].device is None and entries[3].level == "debug"
    assert entries[4].exception is not None and "KeyError: 'oops'" in entries[4].exception
    assert "Traceback" in entries[4].exception

    logging.getLogger("fieldgate_acme.reader").addHandler(ring_)
    try:
        logging.getLogger("fieldgate_acme.reader").error("from a plugin")
    finally:
        logging.getLogger("fieldgate_acme.reader").removeHandler(ring_)
    newest = list(ring_.entries)[-1]
    assert (newest.plugin, newest.id) == ("acme", 6)
    assert len(ring_.entries) == 5 and ring_.entries[0].id == 2  # bounded: the oldest went


def test_queries_filter_and_follow_with_a_cursor(ring: tuple[LogRing, logging.Logger]) -> None:
    ring_, logger = ring
    ring_.size = 100
    for n in range(6):
        with log_context(device=f"plant/m-{n % 2}"):
            logger.log(logging.WARNING if n % 3 == 0 else logging.INFO, "Reading %d of the Meter", n)
    logger.getChild("sub").error("child logger line")

    def messages(**params: str) -> list[str]:
        return [e.message for e in ring_.query(LogQuery.parse(params)).records]

    assert messages(device="plant/m-1") == ["Reading 1 of the Meter", "Reading 3 of the Meter",
                                            "Reading 5 of the Meter"]
    assert messages(device="m-0", level="warning") == ["Reading 0 of the Meter"]  # a bare name: any namespace
    assert messages(level="error") == ["child logger line"]
    assert messages(contains="READING 4") == ["Reading 4 of the Meter"]
    assert messages(logger="fieldgate-test-logs.sub") == ["child logger line"]
    assert len(messages(logger="fieldgate-test-logs")) == 7
    assert messages(logger="fieldgate-test") == []  # a prefix is whole logger-name parts
    assert messages(limit="2") == ["Reading 5 of the Meter", "child logger line"]  # the newest, oldest first
    assert messages(since=str(time.time() + 60)) == []
    assert len(messages(since="10m")) == 7
    assert len(messages(since=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())) <= 7

    first = ring_.query(LogQuery.parse({"device": "m-1", "after": "0", "limit": "2"}))
    assert [e.message for e in first.records] == ["Reading 1 of the Meter", "Reading 3 of the Meter"]
    assert first.more and first.cursor == first.records[-1].id
    rest = ring_.query(LogQuery.parse({"device": "m-1", "after": str(first.cursor), "limit": "2"}))
    assert [e.message for e in rest.records] == ["Reading 5 of the Meter"] and not rest.more
    assert rest.cursor == ring_.last_id
    assert ring_.query(LogQuery.parse({"after": str(rest.cursor)})).records == []
    with log_context(device="plant/m-1"):
        logger.info("a new line")
    newer = ring_.query(LogQuery.parse({"device": "m-1", "after": str(rest.cursor)}))
    assert [e.message for e in newer.records] == ["a new line"]


def test_the_ring_keeps_its_text_within_a_byte_budget() -> None:
    ring = LogRing(size=100, max_bytes=50)
    logger = logging.getLogger("fieldgate-test-budget")
    logger.propagate = False
    logger.addHandler(ring)
    try:
        for n in range(5):
            logger.warning("%02d%s", n, "x" * 18)  # 20 characters each
    finally:
        logger.removeHandler(ring)
    assert [e.message[:2] for e in ring.entries] == ["03", "04"] and ring.text_bytes == 40
    assert ring.query(LogQuery.parse({"after": "0"})).skipped == 3


def test_a_cursor_older_than_the_ring_reports_the_lines_it_missed(ring: tuple[LogRing, logging.Logger]) -> None:
    ring_, logger = ring
    for n in range(8):
        logger.info("line %d", n)
    page = ring_.query(LogQuery.parse({"after": "1"}))
    assert page.skipped == 2 and [e.id for e in page.records] == [4, 5, 6, 7, 8]
    restarted = ring_.query(LogQuery.parse({"after": "500", "limit": "1"}))  # a cursor from before a restart
    assert [e.id for e in restarted.records] == [8]


@pytest.mark.parametrize(("params", "named"), [
    ({"level": "loud"}, "?level=loud"), ({"limit": "0"}, "?limit=0"), ({"limit": "many"}, "?limit=many"),
    ({"limit": "9999"}, "?limit=9999"), ({"after": "-1"}, "?after=-1"), ({"since": "yesterday"}, "?since=yesterday"),
    ({"devcie": "x"}, "?devcie"),
])
def test_bad_query_parameters_are_named(params: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("?", r"\?")):
        LogQuery.parse(params)


def test_query_parameters_survive_the_trip_to_a_node() -> None:
    query = LogQuery.parse({"level": "WARNING", "device": "d", "contains": "x y", "since": "1700000000.5",
                            "after": "3", "limit": "7"})
    assert LogQuery.parse(query.params()) == query


def test_json_log_lines_carry_the_context_fields() -> None:
    record = logging.LogRecord("gateway.pipeline.poller", logging.WARNING, __file__, 1, "%s: down", ("default/d",),
                               None)
    with log_context(device="default/d", plugin="modbus"):
        ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["device"] == "default/d" and line["plugin"] == "modbus" and line["message"] == "default/d: down"
    assert "sink" not in line


# --- through the gateway's web app ----------------------------------------------------------------------------


@pytest.fixture
async def logging_gateway(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> Gateway:
    """A gateway with a good device and two bad ones that log warnings (one with a traceback)."""
    log_ring()
    config = (MODEL + virtual_device("lg-good") + misbehaving_device("lg-buggy", "test-buggy")
              + misbehaving_device("lg-failing", "test-fail"))
    gw: Gateway = await start_gateway(write_config(config))
    await add_user(gw.store, "viewer", "viewer", PASSWORD)
    await wait_for(lambda: gw.api.twin("default/lg-buggy").state == "offline"
                   and gw.api.twin("default/lg-failing").state == "offline")
    return gw


@pytest.fixture
async def api(logging_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_token(logging_gateway.store, "viewer", "logs test")
    transport = httpx.ASGITransport(app=create_app(logging_gateway.api), client=("127.0.0.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


async def test_api_filters_by_device_and_follows_with_the_cursor(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/logs", params={"device": "default/lg-buggy", "level": "warning"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["records"], "the buggy device logged nothing"
    assert {r["device"] for r in page["records"]} == {"default/lg-buggy"}
    assert any("KeyError" in (r.get("exception") or "") for r in page["records"])  # the plugin bug's traceback
    failing = (await api.get("/api/v1/logs?device=lg-failing")).json()["records"]
    assert failing and all("exception code 4" in r["message"] for r in failing if r["level"] == "warning")

    cursor = page["cursor"]
    assert (await api.get(f"/api/v1/logs?device=lg-buggy&after={cursor}")).json()["records"] == []
    with log_context(device="default/lg-buggy"):
        logging.getLogger("gateway.pipeline.poller").warning("default/lg-buggy: one more line")
    logging.getLogger("gateway.pipeline.poller").warning("someone else's line", extra={"device": "default/lg-good"})
    newer = (await api.get(f"/api/v1/logs?device=lg-buggy&after={cursor}")).json()
    assert [r["message"] for r in newer["records"]] == ["default/lg-buggy: one more line"]
    assert newer["cursor"] > cursor


async def test_api_refuses_bad_parameters_and_anonymous_callers(api: httpx.AsyncClient,
                                                                logging_gateway: Gateway) -> None:
    for query, named in (("level=loud", "?level=loud"), ("limit=abc", "?limit=abc"), ("after=x", "?after=x"),
                         ("devcie=d1", "?devcie")):
        response = await api.get(f"/api/v1/logs?{query}")
        assert response.status_code == 400 and named in response.json()["detail"], (query, response.text)
    transport = httpx.ASGITransport(app=create_app(logging_gateway.api), client=("127.0.0.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as anonymous:
        assert (await anonymous.get("/api/v1/logs")).status_code == 401
        page = await anonymous.get("/logs")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


async def test_logs_page_filters_without_scripts(logging_gateway: Gateway) -> None:
    transport = httpx.ASGITransport(app=create_app(logging_gateway.api), client=("127.0.0.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=10) as client:
        browser = Browser(client)
        await browser.login("viewer")
        page = await client.get("/logs", params={"device": "default/lg-failing", "level": "warning"})
        assert page.status_code == 200
        assert 'href="/logs"' in (await client.get("/")).text  # in the navigation
        assert "exception code 4" in page.text and 'data-device="default/lg-failing"' in page.text
        assert 'data-device="default/lg-buggy"' not in page.text
        assert '<option selected>default/lg-failing</option>' in page.text
        by_text = await client.get("/logs", params={"contains": "KEYERROR"})
        assert 'data-device="default/lg-buggy"' in by_text.text
        assert 'data-device="default/lg-failing"' not in by_text.text
        bad = await client.get("/logs?level=loud")
        assert bad.status_code == 400 and "?level=loud: expected one of" in bad.text


async def test_sink_lines_name_their_route(tmp_path: Path) -> None:
    """A route's sink logs inside its context: the line names the sink and the route."""
    from gateway.sinks.base import Sink, SinkError
    from gateway.sinks.manager import SinkRunner
    from gateway.store import Store

    class Down(Sink):
        name = "down"

        async def send(self, batch: Any) -> None:
            raise SinkError("target refused")

    store = Store(tmp_path / "data")
    await store.open()
    ring_ = log_ring()
    try:
        store.outboxes.add("route:plant/up", "t", b"x")
        await store.flush()
        runner = SinkRunner("route:plant/up", Down(), store, min_backoff=0.05)
        runner.log_fields = {"route": "plant/up"}
        task = asyncio.create_task(runner.run())
        await wait_for(lambda: runner.stats.failures > 0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await store.close()
    [line] = ring_.query(LogQuery.parse({"route": "plant/up", "contains": "target refused"})).records
    assert (line.sink, line.route, line.level) == ("route:plant/up", "plant/up", "warning")


def test_a_throttle_logs_a_flood_once_an_interval_and_says_how_many_it_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    from gateway.logs import Throttle

    throttle = Throttle(logging.getLogger("fieldgate.test.throttle"), interval=0.2)
    with caplog.at_level(logging.WARNING, logger="fieldgate.test.throttle"):
        for i in range(100):
            throttle.log(logging.WARNING, "topic/a", "bad message %d", i)
        throttle.log(logging.WARNING, "topic/b", "bad message on b")
        time.sleep(0.25)
        throttle.log(logging.WARNING, "topic/a", "bad message %d", 100)
    assert [r.getMessage() for r in caplog.records] == [
        "bad message 0", "bad message on b", "bad message 100 (99 more like it in the last 0.2 s not logged)"]


def test_the_ring_holds_the_first_lines_of_a_start(tmp_path: Path) -> None:
    """A plugin that fails to load says so while the gateway starts, before its web app: /logs has that line too."""
    import os
    import re
    import subprocess

    from tests.conftest import FIELDGATE, REPO, free_port
    from tests.registry.conftest import stop, wait_for_port

    broken = tmp_path / "site" / "fieldgate_broken-1.0.dist-info"  # an installed plugin whose module is missing
    broken.mkdir(parents=True)
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldgate-broken\nVersion: 1.0\n")
    (broken / "entry_points.txt").write_text("[fieldgate]\nbroken = fieldgate_no_such_module\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "site")])}
    process = subprocess.Popen([*FIELDGATE, "demo", "--data-dir", str(tmp_path / "demo"), "--listen",
                                f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        printed = "".join(process.stdout.readline() for _ in range(3))
        token = re.search(r"API token \(admin\): (\S+)", printed)
        assert token, printed
        wait_for_port(port, process)
        logs = httpx.get(f"http://127.0.0.1:{port}/api/v1/logs", headers={"Authorization": f"Bearer {token.group(1)}"},
                         timeout=10).json()["records"]
    finally:
        stop(process)
    assert process.stderr is not None
    assert "plugin broken from fieldgate-broken failed to load" in process.stderr.read()  # on stderr, as before
    messages = [record["message"] for record in logs]
    assert any(m.startswith("plugin broken from fieldgate-broken failed to load") for m in messages), messages
    assert any("started: node demo" in m for m in messages), messages

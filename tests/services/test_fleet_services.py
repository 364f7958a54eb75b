"""Services across a fleet on loopback: a registry and three real gateways. gw-b and gw-c run an echo app behind one
Service applied at the registry; gw-a calls it: gw-b direct over mutual TLS (its `mesh_listen`), gw-c through the
registry relay (it listens for no direct streams), both reached round-robin, TCP and UDP; a certificate from another
CA cannot open a direct stream; with the registry stopped gw-a still reaches gw-b direct, also right after gw-b
restarted."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.pki import key_pem, make_csr, new_key, write_private
from gateway.registry.ca import CertificateAuthority
from gateway.services.mesh import DIRECT_FAILED_FOR
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port
from tests.registry.test_access import add_user
from tests.registry.test_messages import api
from tests.registry.test_pages import session
from tests.services.conftest import ECHO, PYTHON, service_network
from tests.services.test_local_services import ask, ask_udp

pytestmark = pytest.mark.beside
DEADLINE = 60.0


class FleetNode:
    """A joined gateway (`fieldgate run`) with its services settings and a viewer token for its API."""

    def __init__(self, registry: Registry, tmp_path: Path, name: str, *, direct: bool) -> None:
        self.name = name
        self.data_dir = tmp_path / name
        assert join(registry, registry.token(), self.data_dir, "--name", name).returncode == 0
        self.port = free_port()
        self.mesh_port = free_port() if direct else None
        mesh = f"127.0.0.1:{self.mesh_port}" if direct else "none"
        config = tmp_path / f"{name}.yaml"
        config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: {name}
            http: {{listen: "127.0.0.1:{self.port}"}}
            eventbus: {{url: none}}
            services: {{addresses: {service_network()}, dns_port: 0, mesh_listen: "{mesh}", connect_timeout: 500ms}}
            """))
        token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(self.data_dir)],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        self.log = tmp_path / f"{name}.log"
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.start()
        self.api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}",
                                     headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir",
                                             str(self.data_dir)], stdout=log, stderr=log)
        wait_for_port(self.port, self.process)

    async def service(self, name: str = "echo") -> dict[str, Any]:
        answer = await self.api.get(f"/api/v1/services/default/{name}")
        assert answer.status_code in (200, 404), answer.text
        return answer.json() if answer.status_code == 200 else {}

    async def wait_service(self, check: Any, what: str, name: str = "echo") -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = await self.service(name)
            if view and check(view):
                return view
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name}: {what}: {view}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def echo_workload(node: str) -> dict[str, Any]:
    return {"kind": "Workload", "name": f"echo-{node}", "node": node, "labels": {"app": "echo"},
            "command": [PYTHON, str(ECHO)], "ports": [{"name": "echo"}, {"name": "dgram", "protocol": "udp"}],
            "health": {"type": "tcp", "port": "echo", "interval": "200ms"}}


SERVICE = {"kind": "Service", "name": "echo", "selector": {"app": "echo"}, "prefer": "any",
           "ports": [{"name": "tcp", "port": 7000, "target_port": "echo"},
                     {"name": "udp", "port": 7001, "target_port": "dgram", "protocol": "UDP"}]}


STICKY = {"kind": "Service", "name": "sticky", "selector": {"app": "echo"}, "prefer": "any",
          "session_affinity": "ClientIP", "ports": [{"port": 7000, "target_port": "echo"}]}


def paths(view: dict[str, Any], port: str = "tcp") -> dict[str, set[str]]:
    """The paths each endpoint's connections took, by node."""
    found: dict[str, set[str]] = {}
    for counter in view["counters"]:
        if counter["port"] == port and counter["connections"]:
            found.setdefault(counter["endpoint"].split("/")[0], set()).add(counter["path"])
    return found


async def test_direct_and_relayed_endpoints_across_the_fleet(registry: Registry, tmp_path: Path) -> None:
    nodes = [FleetNode(registry, tmp_path, "gw-a", direct=True), FleetNode(registry, tmp_path, "gw-b", direct=True),
             FleetNode(registry, tmp_path, "gw-c", direct=False)]
    a, b, _ = nodes
    try:
        admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
        with api(registry, admin) as client:
            applied = client.post("/api/v1/documents", json=[echo_workload("gw-b"), echo_workload("gw-c"), SERVICE,
                                                                STICKY])
            assert applied.status_code == 200, applied.text
            view = await a.wait_service(lambda v: sum(e["ready"] for e in v["endpoints"]) == 2, "two ready endpoints")
            listed = client.get("/api/v1/services").json()
            assert [s["ready"] for s in listed] == [2, 2], listed
        address = view["address"]
        answers = [(await ask(address, 7000)).split("|")[0] for _ in range(6)]
        assert {answer.split("-")[2] for answer in answers} == {"b", "c"}, answers  # echo-gw-b-…, echo-gw-c-…
        view = await a.service()
        assert paths(view) == {"gw-b": {"direct"}, "gw-c": {"relay"}}, view["counters"]
        udp = {(await ask_udp(address, 7001)).split("-")[2] for _ in range(4)}  # a flow per client port
        assert udp == {"b", "c"}, udp
        assert paths(await a.service(), "udp") == {"gw-b": {"direct"}, "gw-c": {"relay"}}
        served = await b.service()
        assert any(c["path"] == "served" and c["endpoint"].startswith("gw-a/") for c in served["counters"])

        # the registry has the counters gw-a reported with its heartbeat
        with api(registry, admin) as client:
            deadline = time.monotonic() + DEADLINE
            reported: set[tuple[str, str]] = set()
            expected = {("gw-a", "direct"), ("gw-a", "relay"), ("gw-b", "served"), ("gw-c", "served")}
            while time.monotonic() < deadline and not expected <= reported:  # each node with its own heartbeat
                await asyncio.sleep(0.3)
                echo = next(s for s in client.get("/api/v1/services").json() if s["name"] == "echo")
                reported = {(c["node"], c["path"]) for c in echo["counters"] if c["connections"]}
            assert expected <= reported, reported

        # ClientIP affinity: one client address, one instance
        sticky = (await a.service("sticky"))["address"]
        assert len({(await ask(sticky, 7000)).split("|")[0] for _ in range(6)}) == 1

        # the instance on gw-b stopped: new connections go to gw-c at once (the next one after a refusal at most)
        with api(registry, admin) as client:
            stopped = client.post("/api/v1/nodes/gw-b/workloads/default/echo-gw-b/stop")
            assert stopped.status_code in (200, 202), stopped.text
            started = time.monotonic()
            answers = [(await ask(address, 7000)).split("-")[2] for _ in range(4)]
            assert answers == ["c"] * 4 and time.monotonic() - started < 5.0, answers
            assert client.post("/api/v1/nodes/gw-b/workloads/default/echo-gw-b/start").status_code in (200, 202)
        await b.wait_service(lambda v: any(e["local"] for e in v["endpoints"]), "gw-b's instance ready again")
        await a.wait_service(lambda v: sum(e["ready"] for e in v["endpoints"]) == 2, "gw-b's instance back")

        # a certificate from another CA gets no direct stream
        other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
        key = new_key()
        cert = other.sign_node(make_csr(key), "gw-a")
        (tmp_path / "intruder.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        write_private(tmp_path / "intruder.key", key_pem(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(tmp_path / "intruder.pem", tmp_path / "intruder.key")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", b.mesh_port, ssl=context)
            writer.write(b'{"service": "default/echo", "port": "tcp", "instance": "x"}\n')
            await writer.drain()
            assert await asyncio.wait_for(reader.readuntil(b"\n"), 5) == b""

        # the registry stopped: gw-a keeps its endpoints and reaches gw-b direct
        assert registry.process is not None
        stop(registry.process)
        registry.process = None
        direct_before = sum(c["connections"] for c in (await a.service())["counters"] if c["path"] == "direct")
        answers = [await ask(address, 7000) for _ in range(6)]
        assert all(answer.startswith("echo-gw-b-") for answer in answers), (
            answers, [c for c in (await a.service())["counters"] if c["port"] == "tcp"])
        after = await a.service()
        assert sum(c["connections"] for c in after["counters"] if c["path"] == "direct") >= direct_before + 3, \
            after["counters"]

        # gw-b restarts meanwhile: while it is away its direct address fails and gw-a rests it (DIRECT_FAILED_FOR,
        # 30 s, the relay's time); with no relay to use, gw-a tries the address again and reaches gw-b once it is back
        b.stop()
        assert await ask(address, 7000) == ""  # nothing answers: gw-c only through the relay, gw-b is down
        failed = time.monotonic()
        b.start()
        answer = ""
        while not answer.startswith("echo-gw-b-") and time.monotonic() - failed < 20:
            await asyncio.sleep(0.3)
            try:
                answer = await ask(address, 7000)
            except ConnectionError:  # the proxy found no endpoint that answers
                answer = ""
        assert answer.startswith("echo-gw-b-"), (answer, a.log.read_text()[-2000:])
        assert time.monotonic() - failed < DIRECT_FAILED_FOR
    finally:
        for node in nodes:
            node.stop()
            await node.api.aclose()


def service_events(registry: Registry, admin: str, name: str = "echo") -> list[dict[str, Any]]:
    with api(registry, admin) as client:
        listed = client.get("/api/v1/services")
        assert listed.status_code == 200, listed.text
        return next((s["events"] for s in listed.json() if s["name"] == name), [])


async def wait_events(registry: Registry, admin: str, check: Any, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = service_events(registry, admin)
        if check(events):
            return events
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what}: {events}")


def reload(node: FleetNode, old: str, new: str) -> None:
    """Change the node's configuration file and send it SIGHUP; wait until it says so."""
    assert node.process is not None
    node.config.write_text(node.config.read_text().replace(old, new))
    reloads = node.log.read_text().count("configuration reloaded")
    node.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + DEADLINE
    while node.log.read_text().count("configuration reloaded") == reloads:
        assert time.monotonic() < deadline, node.log.read_text()[-3000:]
        time.sleep(0.1)


async def test_endpoint_events_reach_the_registry_once_and_settings_reload(registry: Registry,
                                                                           tmp_path: Path) -> None:
    """An endpoint that becomes ready or not is an event on every node of the service's workspace, which each
    delivers to the registry with its heartbeat exactly once, also when the registry was away meanwhile; and a
    node's new `mesh_listen`, applied at a reload, reaches the other nodes through the registry."""
    a, b = FleetNode(registry, tmp_path, "gw-a", direct=True), FleetNode(registry, tmp_path, "gw-b", direct=True)
    try:
        admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
        with api(registry, admin) as client:
            applied = client.post("/api/v1/documents", json=[echo_workload("gw-b"), SERVICE])
            assert applied.status_code == 200, applied.text

        def endpoint_events(events: list[dict[str, Any]], node: str, state: str) -> list[dict[str, Any]]:
            found = re.compile(rf"gw-b/echo-gw-b-\S+ {state}\b")  # each start of the workload: a new instance
            return [e for e in events if e["node"] == node and e["event"] == "endpoints" and found.search(e["detail"])]

        view = await a.wait_service(lambda v: sum(e["ready"] for e in v["endpoints"]) == 1, "gw-b's instance ready")
        instance = next(f"gw-b/{e['instance']}" for e in view["endpoints"] if e["ready"])  # the first one
        await wait_events(registry, admin, lambda ev: all(endpoint_events(ev, n, "ready") for n in ("gw-a", "gw-b")),
                          "both nodes report the endpoint ready")

        with api(registry, admin) as client:  # unready: every node of the workspace says so
            stopped = client.post("/api/v1/nodes/gw-b/workloads/default/echo-gw-b/stop")
            assert stopped.status_code in (200, 202), stopped.text
        await wait_events(registry, admin, lambda ev: all(
            endpoint_events(ev, n, "not ready") or endpoint_events(ev, n, "gone") for n in ("gw-a", "gw-b")),
            "both nodes report the endpoint not ready")
        with api(registry, admin) as client:
            assert client.post("/api/v1/nodes/gw-b/workloads/default/echo-gw-b/start").status_code in (200, 202)
        await a.wait_service(lambda v: sum(e["ready"] for e in v["endpoints"]) == 1, "gw-b's instance back")

        # the registry away: an event on gw-a meanwhile (its services move) goes once it is back, and none twice
        assert registry.process is not None
        stop(registry.process)
        registry.process = None
        moved_to = service_network()
        reload(a, a.config.read_text().split("addresses: ")[1].split(",")[0], moved_to)
        await a.wait_service(lambda v: v["address"].rsplit(".", 1)[0] == moved_to.rsplit(".", 1)[0], "moved")
        registry.start()
        events = await wait_events(registry, admin, lambda ev: any(
            e["node"] == "gw-a" and e["event"] == "moved" for e in ev), "gw-a's move after the registry came back")
        await asyncio.sleep(3.0)  # a few more heartbeats: nothing comes again
        events = service_events(registry, admin)
        keys = [(e["node"], e["ts"], e["seq"]) for e in events]
        assert len(keys) == len(set(keys)), events
        for node in ("gw-a", "gw-b"):
            ready = endpoint_events(events, node, "ready")
            assert len(ready) == 2, (node, [(e["seq"], e["detail"]) for e in events])  # first, back: each once
        assert len([e for e in events if e["event"] == "moved"]) == 1, events
        add_user(registry, tmp_path, "watcher", "--role", "viewer", "--scope", "platform")
        with session(registry, "watcher") as pages:  # the Services page lists them
            page = pages.get("/services")
            assert page.status_code == 200 and 'id="service-events"' in page.text, page.text[:2000]
            assert f"{instance} not ready" in page.text or f"{instance} gone" in page.text

        # gw-b listens for direct streams on a new port after a reload: gw-a dials it there
        assert b.mesh_port is not None
        old_mesh, b.mesh_port = b.mesh_port, free_port()
        reload(b, f"127.0.0.1:{old_mesh}", f"127.0.0.1:{b.mesh_port}")
        await a.wait_service(lambda v: any(e["address"] == f"127.0.0.1:{b.mesh_port}" for e in v["endpoints"]),
                             "gw-b's new direct address")
        before = sum(c["connections"] for c in (await a.service())["counters"] if c["path"] == "direct")
        answer = await ask((await a.service())["address"], 7000)
        assert answer.startswith("echo-gw-b-"), answer
        after = sum(c["connections"] for c in (await a.service())["counters"] if c["path"] == "direct")
        assert after == before + 1, (await a.service())["counters"]
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", old_mesh)
    finally:
        for node in (a, b):
            node.stop()
            await node.api.aclose()

"""Services across nodes that cannot all reach each other, in network namespaces the test makes and removes: a
registry and three gateways, each in its own namespace. Every gateway has a veth link to the registry's namespace
(which does not forward between them); A and B have a link of their own, C has none. A TCP and UDP echo app runs on B
and C behind one Service; an app on A calls it by name through A's DNS responder:
- both instances answer, round-robin; ClientIP affinity pins one;
- A→B goes direct (mutual TLS on the A-B link), A→C through the registry relay (C's address is unreachable from A),
  as A's path counters say; UDP the same;
- B's instance stopped: new connections go to C at once;
- the registry stopped: A→B keeps working on the endpoints A kept.
Traffic stays on the test's own veth links and loopbacks."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIELDGATE
from tests.registry.conftest import stop
from tests.services.conftest import APPS, ECHO, PYTHON

pytestmark = [pytest.mark.beside,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
DEADLINE = 60.0
REGISTRY = "10.250.0.1"
PORT = 8443
MESH = 7443
NODES = {"a": ("10.250.1.2", "10.250.1.1"), "b": ("10.250.2.2", "10.250.2.1"), "c": ("10.250.3.2", "10.250.3.1")}
A_B = ("10.250.4.1", "10.250.4.2")


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: exit {result.returncode}: {result.stderr}")
    return result


class Fleet:
    """The namespaces and links (names unique to the test), and commands run in them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.tag = secrets.token_hex(3)
        self.ns = {role: f"fg{self.tag}{role}" for role in ("r", "a", "b", "c")}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens: dict[str, str] = {}

    def build(self) -> None:
        for ns in self.ns.values():
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.ns["r"], "addr", "add", f"{REGISTRY}/32", "dev", "lo")
        for role, (node_ip, registry_ip) in NODES.items():
            self._link(f"v{self.tag}r{role}", self.ns["r"], registry_ip, f"v{self.tag}{role}r", self.ns[role],
                       node_ip)
            run("ip", "-n", self.ns[role], "route", "add", f"{REGISTRY}/32", "via", registry_ip)
        self._link(f"v{self.tag}ab", self.ns["a"], A_B[0], f"v{self.tag}ba", self.ns["b"], A_B[1])

    def _link(self, left: str, left_ns: str, left_ip: str, right: str, right_ns: str, right_ip: str) -> None:
        run("ip", "link", "add", left, "netns", left_ns, "type", "veth", "peer", "name", right, "netns", right_ns)
        for name, ns, ip in ((left, left_ns, left_ip), (right, right_ns, right_ip)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", name)
            run("ip", "-n", ns, "link", "set", name, "up")

    def remove(self) -> None:
        for process in self.processes.values():
            stop(process)
        for ns in self.ns.values():
            run("ip", "netns", "del", ns, check=False)

    def exec(self, role: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.ns[role], *command, check=check)

    def start(self, role: str, *command: str) -> None:
        log = (self.tmp_path / f"{role}.log").open("ab")
        self.processes[role] = subprocess.Popen(["ip", "netns", "exec", self.ns[role], *command], stdout=log,
                                                stderr=log)

    def wait_port(self, role: str, host: str, port: int) -> None:
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
        deadline = time.monotonic() + 30
        while self.exec(role, PYTHON, "-c", probe, check=False).returncode != 0:
            assert time.monotonic() < deadline, (self.tmp_path / f"{role}.log").read_text()[-3000:]
            time.sleep(0.3)

    def registry_cli(self, *args: str) -> str:
        return run(*FIELDGATE, "registry", *args, "--data-dir", str(self.tmp_path / "registry")).stdout.strip()

    def node(self, role: str, mesh: str) -> None:
        data_dir = self.tmp_path / f"gw-{role}"
        token = self.registry_cli("join-token", "create")
        joined = self.exec(role, *FIELDGATE, "join", "--registry", f"https://{REGISTRY}:{PORT}", "--token", token,
                           "--data-dir", str(data_dir), "--name", f"gw-{role}")
        assert "as node" in joined.stdout, joined
        config = self.tmp_path / f"gw-{role}.yaml"
        config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: gw-{role}
            http: {{listen: "127.0.0.1:8080"}}
            eventbus: {{url: none}}
            services: {{mesh_listen: "{mesh}", connect_timeout: 500ms}}
            """))
        self.tokens[role] = run(*FIELDGATE, "token", "create", "--role", "operator", "--data-dir",
                                str(data_dir)).stdout.strip()
        self.start(role, *FIELDGATE, "run", "-c", str(config), "--data-dir", str(data_dir))
        self.wait_port(role, "127.0.0.1", 8080)

    def api(self, role: str, path: str, method: str = "GET") -> Any:
        answer = self.exec(role, PYTHON, str(APPS / "request.py"), method, f"http://127.0.0.1:8080{path}",
                           self.tokens[role])
        status, _, body = answer.stdout.partition("\n")
        assert status in ("200", "202"), answer.stdout
        return json.loads(body)

    def call(self, name: str, port: int, protocol: str, count: int) -> list[str]:
        """What the app on A gets, calling the service by name `count` times."""
        answer = self.exec("a", PYTHON, str(APPS / "caller.py"), name, "127.77.0.1", "53", str(port), protocol,
                           str(count))
        answers: list[str] = json.loads(answer.stdout)["answers"]
        return answers

    def wait_ready(self, service: str, count: int) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = self.api("a", f"/api/v1/services/default/{service}") if self._has(service) else {}
            if view and sum(e["ready"] for e in view["endpoints"]) == count:
                return view
            time.sleep(0.3)
        raise AssertionError(f"{service}: not {count} ready endpoints on gw-a: {view}\n"
                             + (self.tmp_path / "a.log").read_text()[-3000:])

    def _has(self, service: str) -> bool:
        return any(s["name"] == service for s in self.api("a", "/api/v1/services"))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(tmp_path)
    try:
        made.build()
        yield made
    finally:
        made.remove()


def node_of(answer: str) -> str:
    """The node an echo answer came from: `echo-gw-b-…|who` → b."""
    assert answer.startswith("echo-gw-"), answer
    return answer.split("-")[2]


def paths(view: dict[str, Any], port: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for counter in view["counters"]:
        if counter["port"] == port and counter["connections"]:
            found.setdefault(counter["endpoint"].split("/")[0], set()).add(counter["path"])
    return found


def documents() -> list[dict[str, Any]]:
    echo = [{"kind": "Workload", "name": f"echo-gw-{role}", "node": f"gw-{role}", "labels": {"app": "echo"},
             "command": [PYTHON, str(ECHO)], "ports": [{"name": "echo"}, {"name": "dgram", "protocol": "udp"}],
             "health": {"type": "tcp", "port": "echo", "interval": "500ms"}} for role in ("b", "c")]
    ports = [{"name": "tcp", "port": 7000, "target_port": "echo"},
             {"name": "udp", "port": 7001, "target_port": "dgram", "protocol": "UDP"}]
    return [*echo, {"kind": "Service", "name": "echo", "selector": {"app": "echo"}, "prefer": "any", "ports": ports},
            {"kind": "Service", "name": "sticky", "selector": {"app": "echo"}, "prefer": "any",
             "session_affinity": "ClientIP", "ports": ports}]


def test_services_across_nodes_direct_and_relayed(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start("r", *FIELDGATE, "registry", "serve", "--listen", f"{REGISTRY}:{PORT}", "--data-dir",
                str(tmp_path / "registry"), "--heartbeat-interval", "1s")
    fleet.wait_port("a", REGISTRY, PORT)
    fleet.node("a", "none")
    fleet.node("b", f"{A_B[1]}:{MESH}")
    fleet.node("c", f"{NODES['c'][0]}:{MESH}")  # an address A has no route to
    # A cannot reach C at all: only through the registry
    probe = f"import socket; socket.create_connection(({NODES['c'][0]!r}, {MESH}), timeout=2).close()"
    assert fleet.exec("a", PYTHON, "-c", probe, check=False).returncode != 0
    (tmp_path / "services.yaml").write_text("\n---\n".join(json.dumps(doc) for doc in documents()))
    applied = fleet.registry_cli("apply", "-f", str(tmp_path / "services.yaml"))
    assert "Service default/echo" in applied, applied
    fleet.wait_ready("echo", 2)
    fleet.wait_ready("sticky", 2)

    answers = fleet.call("echo.default.svc", 7000, "tcp", 6)
    assert [node_of(a) for a in answers].count("b") == 3 and [node_of(a) for a in answers].count("c") == 3, answers
    assert paths(fleet.api("a", "/api/v1/services/default/echo"), "tcp") == {"gw-b": {"direct"},
                                                                              "gw-c": {"relay"}}
    udp = fleet.call("echo", 7001, "udp", 4)
    assert {node_of(a) for a in udp} == {"b", "c"}, udp
    assert paths(fleet.api("a", "/api/v1/services/default/echo"), "udp") == {"gw-b": {"direct"},
                                                                              "gw-c": {"relay"}}
    assert len({node_of(a) for a in fleet.call("sticky.default.svc", 7000, "tcp", 6)}) == 1

    # B's instance stopped: the next connections go to C
    fleet.api("b", "/api/v1/workloads/default/echo-gw-b/stop", "POST")
    started = time.monotonic()
    assert [node_of(a) for a in fleet.call("echo.default.svc", 7000, "tcp", 4)] == ["c"] * 4
    assert time.monotonic() - started < 5.0  # the health check interval is 500ms; well within a few seconds
    fleet.api("b", "/api/v1/workloads/default/echo-gw-b/start", "POST")
    fleet.wait_ready("echo", 2)

    # the registry stopped: A reaches B direct on the endpoints it kept
    stop(fleet.processes.pop("r"))
    before = fleet.api("a", "/api/v1/services/default/echo")
    direct = sum(c["connections"] for c in before["counters"] if c["path"] == "direct" and c["port"] == "tcp")
    answers = fleet.call("echo.default.svc", 7000, "tcp", 6)
    assert {node_of(a) for a in answers} == {"b"}, answers
    after = fleet.api("a", "/api/v1/services/default/echo")
    assert sum(c["connections"] for c in after["counters"] if c["path"] == "direct" and c["port"] == "tcp") \
        == direct + 6


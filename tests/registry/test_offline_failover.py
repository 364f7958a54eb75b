"""Offline failover with real processes: a registry and three gateways of one group on loopback, each running an etcd
member of the group's consensus store. With the registry stopped, the gateway running an app is SIGKILLed: the app
runs on another member within 30 s; the killed gateway comes back and the app does not run twice (sampled over a
window); the registry comes back, adopts the takeover (audited `failover.offline`) and its placement names the new
node. The group's etcd speaks mutual TLS with certificates from the group's CA at the registry: a client without one
is refused at a member's client URL and at its peer URL."""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until

pytestmark = pytest.mark.beside

TAKEOVER_LIMIT = 30.0  # seconds the acceptance allows from the SIGKILL to the app running on another member
WINDOW = 10.0  # seconds over which the app must run exactly once after the killed node is back


class Member:
    """A joined `fieldgate run` process with `consensus:` settings."""

    def __init__(self, registry: Registry, tmp_path: Path, name: str) -> None:
        self.name = name
        self.data_dir = tmp_path / name
        joined = join(registry, registry.token(), self.data_dir, "--name", name)
        assert joined.returncode == 0, joined.stderr
        self.port = free_port()
        self.peer_url, self.client_url = f"https://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}"
        self.config = tmp_path / f"{name}.yaml"
        # lease 6 s: when a member that led etcd dies, the others renew nothing until they elect a new leader, which
        # takes several seconds on a busy 2-core box; with 4 s a living member's lease lapsed meanwhile and its own
        # app stopped for a moment (the README's advice for the field is 10 s or more)
        self.config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: {name}
            http: {{listen: "127.0.0.1:{self.port}"}}
            eventbus: {{url: none}}
            store: {{flush_interval: 50ms}}
            consensus:
              peer_url: "{self.peer_url}"
              client_url: "{self.client_url}"
              lease_ttl: 6s
            """))
        self.process: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    def start(self) -> None:
        log = (self.data_dir.parent / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir", str(self.data_dir)],
                                        stdout=log, stderr=log)
        log.close()
        wait_for_port(self.port, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def api(self, path: str) -> Any:
        if self.token is None:
            self.token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir",
                                         str(self.data_dir)], capture_output=True, text=True, timeout=30,
                                        check=True).stdout.strip()
        answer = httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10,
                           headers={"Authorization": f"Bearer {self.token}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.api("/api/v1/status")
        return result


@pytest.fixture
def members(registry: Registry, tmp_path: Path) -> Iterator[list[Member]]:
    started = [Member(registry, tmp_path, f"gw-{i}") for i in (1, 2, 3)]
    try:
        for member in started:
            member.start()
        yield started
    finally:
        for member in started:
            member.stop()


def instances(marker: str) -> dict[str, list[str]]:
    """The nodes running each app instance that carries the marker, by workload: from the processes themselves."""
    found: dict[str, list[str]] = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if marker not in (process.info["cmdline"] or []):
                continue
            env = process.environ()
        except psutil.Error:
            continue
        found.setdefault(env.get("FIELDGATE_WORKLOAD", ""), []).append(env.get("FIELDGATE_NODE", ""))
    return found


def placement(registry: Registry, workload: str) -> str | None:
    for line in registry.cli("workloads", "--json").stdout.splitlines():
        view = json.loads(line)
        if view["name"] == workload and view["placed"]:
            return str(view["node"])
    return None


def tls_client(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> httpx.Client:
    """A client that trusts `ca` (None: trusts anything) and shows `cert` (None: none)."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return httpx.Client(verify=context, timeout=10)


def refused(client: httpx.Client, method: str, url: str) -> str:
    """How the member refused the request (a TLS alert, a closed connection); fails when it answers."""
    try:
        answer = client.request(method, url, **({"json": {}} if method == "POST" else {}))
    except httpx.TransportError as exc:
        assert "CERTIFICATE" in str(exc).upper(), exc  # a TLS refusal, not a member that is down
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{url} answered {answer.status_code} to a client without the group's certificate")


def check_mutual_tls(member: Member) -> None:
    """The member's client and peer URLs answer the group's certificates only."""
    directory = member.data_dir / "consensus"
    ca, cert, key = directory / "ca.pem", directory / "member.pem", directory / "member.key"
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in (ca, cert, key))
    status_url, peer_members = f"{member.client_url}/v3/maintenance/status", f"{member.peer_url}/members"
    with tls_client(ca, cert, key) as client:  # with the group's certificate both answer
        assert client.post(status_url, json={}).status_code == 200
        peers = client.get(peer_members)
        assert peers.status_code == 200 and len(peers.json()) == 3, peers.text
    node = member.data_dir / "registry"
    for who, client in (("no certificate", tls_client(None)),
                        # a certificate of the registry's CA (every node of the fleet has one) is not the group's
                        ("the node's certificate", tls_client(None, node / "node.pem", node / "node.key"))):
        with client:
            for method, url in (("POST", status_url), ("POST", f"{member.client_url}/v3/kv/put"),
                                ("GET", peer_members), ("GET", f"{member.peer_url}/raft/probing")):
                how = refused(client, method, url)
                print(f"{who}: {url} refused ({how[:80]})")
    # nor does the registry's CA vouch for the member
    with tls_client(node / "ca.pem", cert, key) as client, pytest.raises(httpx.ConnectError,
                                                                          match="CERTIFICATE_VERIFY_FAILED"):
        client.post(status_url, json={})


def check_member_away(member: Member, marker: str, expected: dict[str, list[str]]) -> None:
    """The node's etcd member killed, and killed again each time it is started, for three leases (4 s): the node
    renews its lease through the group's other members meanwhile, so it keeps its placements and nothing moves. (A
    member that is not the group's leader: killing the leader costs an election, 2 s here, which a 4 s lease with
    its 1 s margin does not always outlast on a busy box.)"""
    first = member.status()["consensus"]
    held = first["held"]
    assert first["member"]["pid"] and f"default/app.{member.name}" in held and first["leader"] != member.name, first
    killed: set[int] = set()
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        consensus = member.status()["consensus"]
        pid = consensus["member"]["pid"]
        if pid and pid not in killed:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
            killed.add(pid)
        assert consensus["lease"]["live"] and consensus["held"] == held, consensus
        assert instances(marker) == expected
        time.sleep(0.3)
    assert killed, "the member was never seen running"
    wait_until(lambda: (pid := member.status()["consensus"]["member"]["pid"]) and pid not in killed, timeout=30,
               what="the member started again")


def check_new_certificate(registry: Registry, member: Member) -> None:
    """A new certificate from the registry (the registry restarted with certificates lasting 60 s, so the member's
    next period begins within 40 s) reaches the member, which restarts its etcd member with it and holds its
    placement again."""
    directory = member.data_dir / "consensus"
    before = (directory / "member.pem").read_text()
    pid = member.status()["consensus"]["member"]["pid"]
    assert registry.process is not None
    stop(registry.process)
    registry.serve_args = ["--consensus-certificate-lifetime", "60s"]
    registry.start()
    wait_until(lambda: (directory / "member.pem").read_text() != before, timeout=60, what="the new certificate")
    renewed = x509.load_pem_x509_certificate((directory / "member.pem").read_bytes())
    assert renewed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == member.name
    assert renewed.not_valid_after_utc - renewed.not_valid_before_utc < datetime.timedelta(minutes=7)
    wait_until(lambda: (s := member.status()["consensus"])["member"]["pid"] not in (None, pid) and s["lease"]["live"]
               and s["held"] == [f"default/app.{member.name}"], timeout=120, what="the member back with it")
    ca, cert, key = directory / "ca.pem", directory / "member.pem", directory / "member.key"

    def answers() -> bool:  # the member restarts at each new period (40 s here): try again over one
        try:
            with tls_client(ca, cert, key) as client:
                return client.post(f"{member.client_url}/v3/maintenance/status", json={}).status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    wait_until(answers, timeout=60, what="the member answering with its new certificate")


def test_a_group_cut_off_from_the_registry_moves_an_app_off_a_dead_member(registry: Registry, members: list[Member],
                                                                          tmp_path: Path) -> None:
    assert shutil.which("etcd"), "etcd is missing: scripts/bootstrap.sh installs etcd-server"
    registry.cli("group", "create", "line-a", "--nodes", "gw-1,gw-2,gw-3")
    marker = f"offline-failover-{uuid.uuid4().hex}"
    (tmp_path / "app.yaml").write_text(textwrap.dedent(f"""\
        kind: BatchWorkload
        name: app
        template:
          command: [{sys.executable}, -c, "import time\\nwhile True: time.sleep(1)", {marker}]
          stop_grace: 1s
        groups: [{{group: line-a}}]
        failover: {{after: 3s, move_back: false}}
        """))
    registry.cli("apply", "-f", str(tmp_path / "app.yaml"))

    # each member runs its instance, holding its placement in the group's store, and the group has a leader
    wait_until(lambda: instances(marker) == {f"default/app.{m.name}": [m.name] for m in members}, timeout=60,
               what="app on every member")
    for member in members:
        consensus = wait_until(lambda m=member: (s := m.status()["consensus"])["held"] == [f"default/app.{m.name}"]
                               and s["leader"] and {n["name"] for n in s["members"] if n["alive"]} == {
                                   "gw-1", "gw-2", "gw-3"} and s, timeout=30,
                               what=f"the placement lock of {member.name}, every member alive")
        assert consensus["engine"] == "etcd" and consensus["group"] == "line-a" and consensus["lease"]["live"]
        assert consensus["taken_over"] == []
        # a certificate of 90 days, in its period's two thirds: a third of it is always left
        until = datetime.datetime.fromisoformat(consensus["certificate_until"]) - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(days=29) < until < datetime.timedelta(days=91)
    check_mutual_tls(members[0])

    # the registry goes away; then gw-3 dies, its app with it
    assert registry.process is not None
    stop(registry.process)
    victim = members[2]
    victim.kill()
    killed_at = time.monotonic()
    wait_until(lambda: "default/app.gw-3" not in instances(marker), timeout=5, what="app.gw-3 gone with gw-3")

    def moved() -> str | None:
        nodes = instances(marker).get("default/app.gw-3", [])
        return nodes[0] if len(nodes) == 1 and nodes[0] != "gw-3" else None

    new_node = wait_until(moved, timeout=TAKEOVER_LIMIT + 15, what="app.gw-3 on another member")
    took = time.monotonic() - killed_at
    print(f"\noffline takeover: app.gw-3 runs on {new_node} {took:.1f} s after gw-3 was SIGKILLed "
          f"(lease 6 s, failover.after 3 s)")
    assert took < TAKEOVER_LIMIT, f"offline takeover took {took:.1f}s"
    taker = next(m for m in members if m.name == new_node)
    assert "default/app.gw-3" in taker.status()["consensus"]["taken_over"]

    # gw-3 comes back with the registry still away: it finds its placement held by another member and does not start
    # the app; every instance runs exactly once over the window
    victim.start()
    wait_until(lambda: victim.status()["consensus"]["lease"]["live"], timeout=30, what="gw-3 back in the group")
    deadline = time.monotonic() + WINDOW
    samples = 0
    while time.monotonic() < deadline:
        running = instances(marker)
        assert running == {"default/app.gw-1": ["gw-1"], "default/app.gw-2": ["gw-2"],
                           "default/app.gw-3": [new_node]}, running
        samples += 1
        time.sleep(0.5)
    assert samples >= 10
    assert victim.status()["consensus"]["held"] == []
    [fenced] = [w for w in victim.api("/api/v1/workloads") if w["id"] == "default/app.gw-3"]
    assert fenced["status"] == "not-scheduled" and fenced["reason"] == f"held by node {new_node} of the group " \
                                                                       "(offline failover)", fenced

    # the registry comes back: it adopts the takeover, its placement names the new node, and it is audited
    registry.start()
    try:
        wait_until(lambda: placement(registry, "app.gw-3") == new_node, timeout=60, what="the registry agreeing")
    except AssertionError as exc:
        lines = [f"{log.name}: {line}" for log in (registry.log, *(tmp_path / f"{m.name}.log" for m in members))
                 for line in log.read_text(errors="replace").splitlines()
                 if any(word in line for word in ("placed", "taken over", "moved", "failover", "registry"))]
        raise AssertionError(f"{exc}; placed on {placement(registry, 'app.gw-3')}:\n" + "\n".join(lines[-80:])) \
            from None
    audit = [json.loads(line) for line in registry.cli("audit", "--json", "--limit", "200").stdout.splitlines()]
    adopted = [e for e in audit if e["action"] == "failover.offline"]
    assert adopted and adopted[-1]["outcome"] == "ok" and adopted[-1]["actor"] == f"node:{new_node}"
    assert adopted[-1]["object"] == "Workload/default/app.gw-3"
    # the node stops reporting it once the registry agrees, and still runs it, as the registry's now
    wait_until(lambda: taker.status()["consensus"]["taken_over"] == [], timeout=20, what="the takeover settled")
    time.sleep(3)
    assert instances(marker) == {"default/app.gw-1": ["gw-1"], "default/app.gw-2": ["gw-2"],
                                 "default/app.gw-3": [new_node]}
    assert placement(registry, "app.gw-3") == new_node
    leader = taker.status()["consensus"]["leader"]
    away = next(m for m in members[:2] if m.name != leader)
    check_member_away(away, marker, {"default/app.gw-1": ["gw-1"], "default/app.gw-2": ["gw-2"],
                                     "default/app.gw-3": [new_node]})
    check_new_certificate(registry, next(m for m in members[:2] if m.name != new_node))


def test_with_the_registry_there_the_group_and_the_registry_move_an_app_once(registry: Registry,
                                                                             members: list[Member],
                                                                             tmp_path: Path) -> None:
    """The registry up and `move_back: true`: whichever of the group and the registry moves the app off the dead
    node first, it runs once, and back on its node when that returns, never twice on the way."""
    assert shutil.which("etcd"), "etcd is missing: scripts/bootstrap.sh installs etcd-server"
    registry.cli("group", "create", "line-a", "--nodes", "gw-1,gw-2,gw-3")
    marker = f"offline-failover-{uuid.uuid4().hex}"
    (tmp_path / "app.yaml").write_text(textwrap.dedent(f"""\
        kind: BatchWorkload
        name: app
        template:
          command: [{sys.executable}, -c, "import time\\nwhile True: time.sleep(1)", {marker}]
          stop_grace: 1s
        groups: [{{group: line-a}}]
        failover: {{after: 3s, move_back: true}}
        """))
    registry.cli("apply", "-f", str(tmp_path / "app.yaml"))
    wait_until(lambda: instances(marker) == {f"default/app.{m.name}": [m.name] for m in members}, timeout=60,
               what="app on every member")
    wait_until(lambda: all(m.status()["consensus"]["held"] == [f"default/app.{m.name}"] for m in members),
               timeout=30, what="every placement lock held")

    def once(where: set[str]) -> str | None:
        """The node running app.gw-3 when it is one of `where`; never two instances of any app."""
        running = instances(marker)
        assert all(len(nodes) == 1 for nodes in running.values() if nodes), running
        assert running.get("default/app.gw-1") == ["gw-1"] and running.get("default/app.gw-2") == ["gw-2"], running
        nodes = running.get("default/app.gw-3", [])
        return nodes[0] if nodes and nodes[0] in where else None

    victim = members[2]
    victim.kill()
    moved_to = wait_until(lambda: once({"gw-1", "gw-2"}), timeout=45, what="app.gw-3 on another member")
    wait_until(lambda: placement(registry, "app.gw-3") == moved_to, timeout=30, what="the registry agreeing")
    victim.start()
    wait_until(lambda: once({"gw-3"}), timeout=60, what="app.gw-3 back on gw-3")
    wait_until(lambda: placement(registry, "app.gw-3") == "gw-3", timeout=30, what="the registry placing it home")
    for _ in range(10):  # and it stays there, once
        assert once({"gw-3"}) == "gw-3"
        time.sleep(0.5)

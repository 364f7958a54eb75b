"""The node's services from containers on a bridge network, with real podman and a real gateway: a TCP and UDP echo
app (process workloads) behind a Service; a container (`network: ports`) and a pod resolve it by name through their
resolv.conf (the node's DNS responder inside their namespace) from their very first instruction on, exchange bytes
with it over TCP and UDP, and the node's counters show the connections (path `local`); a Service added while the
container runs is reachable from it, a removed one refuses. Without the privilege to enter a namespace the container
runs without the services and the log says why, once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from container_helpers import Images, Node, podman, wait_until
from fieldgate_container.runtime import LABEL_WORKLOAD

from gateway.testing import without_capability
from tests.services.conftest import service_network
from tests.services.test_local_services import documents as echo_documents

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="entering a container's network namespace needs root")
BUSYBOX = "/bin/busybox"
# the first thing the app does: find the service by name and talk to it over TCP and UDP
FIRST = ("addr=$(/bin/busybox nslookup echo.default.svc | /bin/busybox awk '/^Address: /{print $2}'); "
         "echo resolved $addr; echo who-first | /bin/busybox nc -w 3 $addr 7000; echo; "
         "/bin/udp-ask $addr 7001 who-udp; exec /bin/busybox httpd -f -p 8080 -h /www")
# A UDP client for the image (busybox's nc has none): sends its third argument to host:port, prints the answer.
UDP_ASK = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) return 2;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval wait = {.tv_sec = 0, .tv_usec = 500000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    char answer[2048];
    for (int i = 0; i < 10; i++) {  /* the first datagram may go before the proxy's flow has its endpoint */
        sendto(fd, argv[3], strlen(argv[3]), 0, (struct sockaddr *)&to, sizeof to);
        ssize_t got = recv(fd, answer, sizeof answer - 1, 0);
        if (got > 0) { answer[got] = 0; printf("%s\n", answer); return 0; }
    }
    printf("no UDP answer\n");
    return 1;
}
"""


@pytest.fixture(scope="module")
def image(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test image with the UDP client."""
    context = tmp_path_factory.mktemp("udp-ask")
    (context / "udp-ask.c").write_text(UDP_ASK)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(context / "udp-ask"), str(context / "udp-ask.c")],
                   check=True, timeout=120)
    (context / "Containerfile").write_text(f"FROM {images.tag(1)}\nCOPY udp-ask /bin/udp-ask\n")
    tag = f"{images.repository}-services:1"
    podman("build", "-q", "-t", tag, str(context))
    yield tag
    podman("rmi", "-f", tag, check=False)


@pytest.fixture(autouse=True)
def publish_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", "127.0.0.1")


def sh(script: str) -> list[str]:
    return [BUSYBOX, "sh", "-c", script]


def settings(replicas: int = 1) -> tuple[str, str]:
    """The node's services settings (a loopback /24 of the test's own; the host's DNS port a free one: inside a
    container's namespace the responder answers at 53 all the same), the echo app with its Service as the local
    services tests have them, and a Service on the port the callers serve on themselves (8080: theirs to listen on,
    on every address)."""
    node_settings, documents = echo_documents(service_network(), replicas=replicas)
    return node_settings, f"{documents}---\nkind: Service\nname: clash\nselector: {{app: echo}}\n" \
                          "ports: [{port: 8080, target_port: echo}]\n"


def app(image: str, name: str = "caller", **extra: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "container", "image": image, "command": sh(FIRST),
            "stop_grace": "1s", "ports": [{"name": "http", "container_port": 8080}], **extra}


def container_of(workload: str, member: str = "") -> str:
    names = podman("ps", "--filter", f"label={LABEL_WORKLOAD}=default/{workload}", "--format",
                   "{{.Names}}").split()
    found = [n for n in names if not n.endswith("-infra") and (not member or n.endswith(f"-{member}"))]
    assert len(found) == 1, names
    return found[0]


async def inside(container: str, script: str) -> tuple[int, str]:
    """Run a shell script in the container (without blocking the loop the gateway's proxies run on)."""
    process = await asyncio.create_subprocess_exec(
        "podman", "exec", container, BUSYBOX, "sh", "-c", script, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


async def logs(node: Node, name: str) -> str:
    return (await node.api.get(f"/api/v1/workloads/default/{name}/logs")).text


async def running(node: Node, name: str, ready: int = 1) -> dict[str, Any] | None:
    found = await node.workload(name)
    return found if found["status"] == "running" and found.get("ready", 0) >= ready else None


async def counters(node: Node, service: str = "echo") -> dict[str, int]:
    """Connections per port of the service, path `local`."""
    view = (await node.api.get(f"/api/v1/services/default/{service}")).json()
    totals: dict[str, int] = {}
    for counter in view["counters"]:
        assert counter["path"] == "local", counter
        totals[counter["port"]] = totals.get(counter["port"], 0) + counter["connections"]
    return totals


def open_fds() -> set[str]:
    """What the gateway's (this process's) file descriptors are: `socket:[inode]`, `net:[inode]`, paths."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def held_in_namespaces(node: Node) -> set[str]:
    """The descriptors the gateway holds for containers' namespaces: each namespace's and its listening sockets'."""
    held = set()
    for attached in node.gateway.services.namespaces:
        assert attached.namespace is not None
        held.add(os.readlink(f"/proc/self/fd/{attached.namespace.fd}"))
        for _, _, server in attached.listeners.values():
            sockets = server.sockets if isinstance(server, asyncio.Server) else [server.get_extra_info("socket")]
            held |= {os.readlink(f"/proc/self/fd/{sock.fileno()}") for sock in sockets}
    return held


async def by_name(container: str, service: str, port: int) -> str | None:
    """From inside the container: the address its resolver finds for the service, then the echo's answer there
    (`<address>\n<instance>|who-<service>`); None until both work."""
    code, out = await inside(container, f"addr=$(/bin/busybox nslookup {service}.default.svc | /bin/busybox awk "
                                        f"'/^Address: /{{print $2}}'); echo $addr; echo who-{service} | "
                                        f"/bin/busybox nc -w 3 $addr {port}")
    return out if code == 0 and f"|who-{service}" in out else None


async def first_exchange(node: Node, name: str) -> str:
    """The log of the app's first instruction: the service's address it resolved, the TCP and the UDP answers."""
    async def done() -> str | None:
        text = await logs(node, name)
        return text if "who-udp" in text else None

    try:
        found: str = await wait_until(done)
    except AssertionError:
        raise AssertionError(f"{await node.workload(name)}\n{await logs(node, name)}") from None
    return found


async def test_a_container_on_a_bridge_network_calls_services_by_name(image: str,
                                                                       start_node: Callable[..., Any]) -> None:
    node_settings, documents = settings(replicas=2)
    node: Node = await start_node(documents, node_settings)
    await wait_until(lambda: running(node, "echo", 2))
    address = (await node.api.get("/api/v1/services/default/echo")).json()["address"]
    await node.deploy(app(image))
    text = await first_exchange(node, "caller")
    assert f"resolved {address}" in text, text  # by name, before anything else ran in the container
    assert "echo-" in text and "|who-first" in text, text  # the TCP echo answered through the proxy
    assert "|who-udp" in text, text  # and the UDP one
    found = await counters(node)
    assert found.get("tcp", 0) >= 1 and found.get("udp", 0) >= 1, found

    container = container_of("caller")
    # the app listens on all addresses of its port 8080, which a Service of the node uses too: that one is left out
    code, page = await inside(container, "/bin/busybox wget -q -O - http://127.0.0.1:8080/index.html")
    assert code == 0 and page == "version 1\n", page
    assert (await node.workload("caller"))["instances"][0]["restarts"] == 0
    # round-robin from inside: both instances answer
    answers = [(await inside(container, f"echo who | /bin/busybox nc -w 3 {address} 7000"))[1] for _ in range(4)]
    assert len({a.split("|")[0] for a in answers}) == 2, answers

    code, resolv = await inside(container, "cat /etc/resolv.conf")
    dns = node.gateway.services.dns_address()
    assert code == 0 and f"nameserver {dns}" in resolv, resolv
    status = (await node.api.get("/api/v1/status")).json()
    assert status["services"]["container_namespaces"] == 1, status["services"]

    # a Service added while it runs is reachable from it; a removed one refuses
    added = await node.api.post("/api/v1/services", json={
        "name": "late", "selector": {"app": "echo"}, "ports": [{"port": 7100, "target_port": "echo"}],
        "session_affinity": "ClientIP"})
    assert added.status_code == 201, added.text
    late = (await node.api.get("/api/v1/services/default/late")).json()["address"]

    out = await wait_until(lambda: by_name(container, "late", 7100))
    assert out.startswith(late), out
    assert (await counters(node, "late")).get("7100", 0) >= 1
    # ClientIP affinity: the container is one client (its own address), kept on one instance
    answers = [(await inside(container, f"echo who | /bin/busybox nc -w 3 {late} 7100"))[1] for _ in range(4)]
    assert len({a.split("|")[0] for a in answers}) == 1, answers

    removed = await node.api.delete("/api/v1/services/default/late")
    assert removed.status_code == 200, removed.text

    async def refused() -> str | None:
        code, out = await inside(container, f"echo who | /bin/busybox nc -w 3 {late} 7100")
        return out if code != 0 else None

    assert "refused" in (await wait_until(refused)).lower()
    code, out = await inside(container, "/bin/busybox nslookup late.default.svc")
    assert code != 0 and "NXDOMAIN" in out, out

    # new service addresses at a reload: the listeners in the container's namespace move with the services, and its
    # DNS stays at the address its resolv.conf names
    path = node.gateway.configuration.config_path
    assert path is not None
    network = node_settings.split("addresses: ")[1].split(",")[0]
    while (moved_to := service_network()) == network:
        continue
    path.write_text(path.read_text().replace(network, moved_to))
    await node.gateway.configuration.reload_files()
    moved = node.gateway.services.address_of("default", "echo")
    assert moved is not None and moved != address

    out = await wait_until(lambda: by_name(container, "echo", 7000))
    assert out.startswith(moved), out

    # a restart (a new container, a new namespace) and then the stop close what the gateway held in the old ones
    held = held_in_namespaces(node)
    assert len(held) == 5, held  # the namespace itself, echo's TCP and UDP listeners, the DNS responder's UDP and TCP
    restarted = await node.api.post("/api/v1/workloads/default/caller/restart")
    assert restarted.status_code in (200, 202), restarted.text
    old_sockets = {h for h in held if h.startswith("socket:")}  # (a namespace's number may be taken again)

    def renewed() -> bool:
        now = held_in_namespaces(node)
        return len(node.gateway.services.namespaces) == 1 and len(now) == 5 and not now & old_sockets

    await wait_until(renewed)
    assert not old_sockets & open_fds()
    held = held_in_namespaces(node)
    stopped = await node.api.post("/api/v1/workloads/default/caller/stop")
    assert stopped.status_code == 202, stopped.text
    await wait_until(lambda: not node.gateway.services.namespaces)
    assert not held & open_fds()


async def test_a_pod_calls_services_by_name(image: str, start_node: Callable[..., Any]) -> None:
    node_settings, documents = settings()
    node: Node = await start_node(documents, node_settings)
    await wait_until(lambda: running(node, "echo"))
    address = (await node.api.get("/api/v1/services/default/echo")).json()["address"]
    await node.deploy({"name": "shop", "runtime": "container", "stop_grace": "1s", "containers": [
        {"name": "caller", "image": image, "command": sh(FIRST)},
        {"name": "other", "image": image, "command": sh("echo other up; exec /bin/busybox sleep 600"),
         "ports": [{"name": "http", "container_port": 8080}]}]})
    text = await first_exchange(node, "shop")
    assert f"resolved {address}" in text and "|who-first" in text and "|who-udp" in text, text
    found = await counters(node)
    assert found.get("tcp", 0) >= 1 and found.get("udp", 0) >= 1, found
    # every container of the pod shares its namespace: the other one reaches the service too
    await wait_until(lambda: running(node, "shop"))
    code, out = await inside(container_of("shop", "other"), f"echo who-other | /bin/busybox nc -w 3 {address} 7000")
    assert code == 0 and "|who-other" in out, out

    stopped = await node.api.post("/api/v1/workloads/default/shop/stop")
    assert stopped.status_code == 202, stopped.text
    await wait_until(lambda: not node.gateway.services.namespaces)


@pytest.fixture
def without_sys_admin() -> Iterator[None]:
    """CAP_SYS_ADMIN out of the effective set of the event loop's thread (the threads that enter namespaces are
    started from it); the engine's processes, started anew as root, have it all the same."""
    with without_capability():
        yield


async def test_without_the_privilege_the_container_runs_without_the_services(
        image: str, start_node: Callable[..., Any], without_sys_admin: None,
        caplog: pytest.LogCaptureFixture) -> None:
    node_settings, documents = settings()
    node: Node = await start_node(documents, node_settings)
    await wait_until(lambda: running(node, "echo"))
    caplog.set_level(logging.WARNING, "gateway.services")
    await node.deploy(app(image, restart="always", restart_delay="0.2s",
                          command=sh("echo started; /bin/busybox cat /etc/resolv.conf; "
                                     "/bin/busybox nc -w 1 $ECHO_SERVICE_HOST 7000 </dev/null; echo exit $?")))

    async def twice() -> str | None:
        text = await logs(node, "caller")
        return text if text.count("exit ") >= 2 else None

    text = await wait_until(twice)  # it ran (and ran again): no crash, no services inside
    assert "exit 1" in text, text
    # nothing would answer the node's DNS responder in there: the container keeps the engine's DNS
    assert f"nameserver {node.gateway.services.dns_address()}" not in text and "nameserver" in text, text
    warnings = [r.getMessage() for r in caplog.records if "run without the node's services" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not at every restart
    assert "cannot enter their network namespaces" in warnings[0] and "Operation not permitted" in warnings[0], \
        warnings
    assert not node.gateway.services.namespaces

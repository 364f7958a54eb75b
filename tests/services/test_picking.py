"""How the proxy picks an endpoint, on its own: `prefer: local` takes this node's ready instance while there is one,
`any` spreads over the fleet, round-robin goes in turn, random covers every one, ClientIP keeps a client on its
endpoint until its timeout, and an endpoint that failed rests until none else is left."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.resources.schema import Service, ServicePort
from gateway.services.mesh import NoEndpoint, ServiceMesh, ServiceState, Target

LOCAL = [Target("gw-a", "echo-1", 31000)]
REMOTE = [Target("gw-b", "echo-2", 32000, "10.0.0.2:7443", local=False),
          Target("gw-c", "echo-3", 33000, "", local=False)]


def state(monkeypatch: pytest.MonkeyPatch, local: list[Target], **fields: Any) -> tuple[ServiceMesh, ServiceState]:
    mesh = ServiceMesh.__new__(ServiceMesh)
    mesh.failed = {}
    monkeypatch.setattr(mesh, "local_targets", lambda service, port: list(local), raising=False)
    monkeypatch.setattr(mesh, "remote_targets", lambda service, port: list(REMOTE), raising=False)
    service = Service(name="echo", workload="echo", ports=[ServicePort(port=7000)], **fields)
    return mesh, ServiceState(service, "127.77.0.2")


def picks(mesh: ServiceMesh, state: ServiceState, count: int, client: str = "127.0.0.1") -> list[str]:
    return [mesh.pick(state, state.service.ports[0], client, set()).node for _ in range(count)]


def test_prefer_local_takes_the_local_instance_while_it_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh, local_first = state(monkeypatch, LOCAL)
    assert picks(mesh, local_first, 4) == ["gw-a"] * 4
    mesh, none_here = state(monkeypatch, [])
    assert picks(mesh, none_here, 4) == ["gw-b", "gw-c", "gw-b", "gw-c"]


def test_any_goes_round_robin_over_the_fleet_or_at_random(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh, fleet = state(monkeypatch, LOCAL, prefer="any")
    assert picks(mesh, fleet, 6) == ["gw-a", "gw-b", "gw-c"] * 2
    mesh, spread = state(monkeypatch, LOCAL, prefer="any", load_balancing="random")
    assert set(Counter(picks(mesh, spread, 300))) == {"gw-a", "gw-b", "gw-c"}


def test_client_ip_affinity_keeps_a_client_until_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh, sticky = state(monkeypatch, LOCAL, prefer="any", session_affinity="ClientIP")
    first = picks(mesh, sticky, 5, "10.1.1.1")
    assert len(set(first)) == 1
    assert picks(mesh, sticky, 1, "10.1.1.2") != first[:1]  # another client: the next in turn
    sticky.affinity["10.1.1.1"] = (sticky.affinity["10.1.1.1"][0], 0.0)  # its timeout passed
    assert len(set(picks(mesh, sticky, 3, "10.1.1.1"))) == 1


def test_a_failed_endpoint_rests_until_none_else_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh, fleet = state(monkeypatch, [], prefer="any")
    mesh.failed["gw-b/echo-2"] = float("inf")
    assert picks(mesh, fleet, 3) == ["gw-c"] * 3
    mesh.failed["gw-c/echo-3"] = float("inf")
    assert picks(mesh, fleet, 1)[0] in ("gw-b", "gw-c")  # every one failed a moment ago: still worth a try
    with pytest.raises(NoEndpoint):
        mesh.pick(fleet, fleet.service.ports[0], "x", {"gw-b/echo-2", "gw-c/echo-3"})

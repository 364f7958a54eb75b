"""The Service kind: what `fieldgate check` refuses (with the file, the document and the field), target ports by
workload port name, and the registry: applying a Service (its `endpoints` are the registry's), the permission it
needs, and the endpoints it computes from placements and the nodes' reports (the DNS responder: test_dns.py)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import ResourceError
from gateway.resources.loader import Source, check_documents
from gateway.resources.schema import PortMapping, Service, ServicePort, Workload
from gateway.resources.services import instance_ports
from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry
from tests.registry.test_access import two_workspaces
from tests.registry.test_messages import api
from tests.registry.test_pages import beat

WORKLOAD = {"kind": "Workload", "name": "echo", "command": ["true"], "labels": {"app": "echo"},
            "ports": [{"name": "echo"}, {"name": "dgram", "protocol": "udp"}]}


def problems(*documents: dict[str, Any]) -> list[str]:
    with pytest.raises(ResourceError) as raised:
        check_documents([(Source("s.yaml", i), d) for i, d in enumerate(documents, start=1)], {})
    return raised.value.problems


@pytest.mark.parametrize(("service", "expected"), [
    ({"name": "echo", "ports": [{"port": 1}]}, "$: give either selector or workload"),
    ({"name": "echo", "workload": "echo", "selector": {"app": "echo"}, "ports": [{"port": 1}]},
     "$: give either selector or workload"),
    ({"name": "echo", "workload": "echo", "ports": []}, "$.ports: Expected array of length >= 1"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 0}]}, "$.ports[0].port: Expected int >= 1"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7, "protocol": "SCTP"}]},
     "$.ports[0].protocol"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7}, {"name": "b", "port": 8}]},
     "ports[0].name is required when the service has more than one port"),
    ({"name": "echo", "workload": "echo", "ports": [{"name": "a", "port": 7}, {"name": "a", "port": 8}]},
     "ports[1].name 'a' is used twice"),
    ({"name": "echo", "workload": "echo", "ports": [{"name": "a", "port": 7}, {"name": "b", "port": 7}]},
     "port 7/TCP is listed twice"),
    ({"name": "echo.v2", "workload": "echo", "ports": [{"port": 7}]}, "$.name: Expected str matching regex"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7}], "session_affinity": "Cookie"},
     "$.session_affinity"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7}], "load_balancing": "least"}, "$.load_balancing"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7}], "prefer": "remote"}, "$.prefer"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7}], "sticky": True},
     "sticky"),
    ({"name": "echo", "workload": "echo", "ports": [{"port": 7, "target_port": "nope"}]},
     "$.ports[0].target_port: workload echo has no port named 'nope' (its ports: echo, dgram)"),
])
def test_check_names_the_field_of_a_bad_service(service: dict[str, Any], expected: str) -> None:
    found = problems(WORKLOAD, {"kind": "Service", **service})
    assert len(found) == 1 and found[0].startswith("s.yaml: document 2 (Service ") and expected in found[0], found


def test_fieldgate_check_exits_2_with_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("kind: Service\nname: echo\nselector: {app: echo}\nports: [{port: 70000}]\n")
    result = subprocess.run([*FIELDGATE, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "document 1 (Service echo): $.ports[0].port" in result.stderr, result


def test_target_ports_by_name_by_number_and_by_default() -> None:
    workload = Workload(name="echo", command=["true"], ports=[PortMapping(name=n, container_port=p)
                                                              for n, p in (("echo", 8080), ("dgram", 9090))])
    service = Service(name="echo", workload="echo", ports=[
        ServicePort(name="a", port=80, target_port="echo"), ServicePort(name="b", port=90, target_port=9090),
        ServicePort(name="c", port=7000), ServicePort(name="d", port=1, target_port="gone")])
    assert instance_ports(service, workload, {"echo": 31000, "dgram": 31001}) == {"a": 31000, "b": 31001,
                                                                                 "c": 7000}


def test_the_registry_keeps_services_and_computes_their_endpoints(registry: Registry) -> None:
    admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
    viewer = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    service = {"kind": "Service", "name": "echo", "selector": {"app": "echo"}, "ports": [{"port": 7000}],
               "endpoints": [{"node": "forged", "instance": "x", "ready": True, "ports": {"7000": 1}}]}
    with api(registry, viewer) as reader, api(registry, admin) as writer:
        refused = reader.post("/api/v1/documents", json=[service])
        assert refused.status_code == 403, refused.text
        bad = writer.post("/api/v1/documents", json=[{**service, "ports": [{"port": 7000, "protocol": "ICMP"}]}])
        assert bad.status_code == 400 and "$.ports[0].protocol" in bad.text, bad.text
        applied = writer.post("/api/v1/documents", json=[service])
        assert applied.status_code == 200 and applied.json()["applied"] == ["Service default/echo"], applied.text
        listed = reader.get("/api/v1/services").json()
        assert [(s["name"], s["endpoints"], s["ready"]) for s in listed] == [("echo", [], 0)]  # forged: dropped
        assert writer.delete("/api/v1/documents/Service/default/echo").status_code == 200
        assert reader.get("/api/v1/services").json() == []


def test_a_node_reports_events_of_its_own_workspaces_services_only(registry: Registry, tmp_path: Path) -> None:
    """Node `a` (workspace default) and node `b` (workspace plant-b) both report events of default/echo: the
    registry keeps a's only; an event malformed in any field refuses the heartbeat, naming the field."""
    two_workspaces(registry, tmp_path)
    admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
    with api(registry, admin) as client:
        applied = client.post("/api/v1/documents", json=[{"kind": "Service", "name": "echo", "workload": "echo",
                                                         "ports": [{"port": 7000}]}])
        assert applied.status_code == 200, applied.text
    event = {"seq": 1, "ts": 10.0, "service": "default/echo", "event": "endpoints", "detail": "1 of 1 ready"}
    for node in ("a", "b"):
        beat(registry, tmp_path / node, {"service_events": [event]})
    beat(registry, tmp_path / "a", {"service_events": [event]})  # again: kept once
    with api(registry, admin) as client:
        events = next(s for s in client.get("/api/v1/services").json() if s["name"] == "echo")["events"]
    assert [(e["node"], e["seq"], e["detail"]) for e in events] == [("a", 1, "1 of 1 ready")]
    directory = tmp_path / "a" / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as node:
        for bad, field in (({"event": ""}, "event"), ({"ts": 1e20}, "ts"), ({"ts": -1.0}, "ts"),
                           ({"seq": 1 << 63}, "seq"), ({"service": "x" * 600}, "service")):
            refused = node.post("/api/v1/heartbeat", json={"service_events": [{**event, **bad}]})
            assert refused.status_code == 400 and f"service_events[0].{field}" in refused.text, (bad, refused.text)

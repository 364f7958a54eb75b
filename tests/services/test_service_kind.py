"""The Service kind: what `fieldgate check` refuses (with the file, the document and the field), target ports by
workload port name, the DNS responder against names it does not serve and datagrams that are no query, and the
registry: applying a Service (its `endpoints` are the registry's), the permission it needs, and the endpoints it
computes from placements and the nodes' reports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ResourceError
from gateway.resources.loader import Source, check_documents
from gateway.resources.schema import PortMapping, Service, ServicePort, Workload
from gateway.resources.services import instance_ports
from gateway.services.dns import DnsResponder
from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry
from tests.registry.test_messages import api

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


class _Mesh:
    def resolve(self, name: str) -> str | None:
        return "127.77.0.9" if name.lower() in ("echo", "echo.default", "echo.default.svc") else None


def test_the_dns_responder_answers_service_names_only() -> None:
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    answer = DNSRecord.parse(dns.answer(DNSRecord.question("echo.default.svc").pack()))
    assert [(rr.rtype, str(rr.rdata)) for rr in answer.rr] == [(QTYPE.A, "127.77.0.9")]
    assert DNSRecord.parse(dns.answer(DNSRecord.question("echo", "AAAA").pack())).rr == []
    missing = DNSRecord.parse(dns.answer(DNSRecord.question("example.com").pack()))
    assert missing.header.rcode == RCODE.NXDOMAIN and missing.rr == []
    for junk in (b"", b"\x00" * 11, b"\xff" * 40, b"x" * 600, DNSRecord.question("echo").reply().pack()):
        assert dns.answer(junk) is None  # no query: no answer, never an exception


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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["echo.default.svc", "echo", "a" * 63 + ".b", "x.y.z", "ECHO.Default.SVC"]),
       st.sampled_from(["A", "AAAA", "ANY", "SRV", "TXT"]),
       st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=6),
       st.integers(0, 600), st.binary(max_size=20))
def test_the_dns_responder_never_raises_on_mangled_queries(name: str, qtype: str, flips: list[tuple[int, int]],
                                                           cut: int, tail: bytes) -> None:
    """Valid queries with bytes flipped, cut short or followed by junk: an answer or nothing, never an exception
    (an exception in the datagram callback would be logged for every packet a hostile sender sends)."""
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    data = bytearray(DNSRecord.question(name, qtype).pack())
    for offset, value in flips:
        if data:
            data[offset % len(data)] = value
    mangled = bytes(data[:cut]) + tail
    answer = dns.answer(mangled)
    assert answer is None or (isinstance(answer, bytes) and len(answer) <= 512)

"""The messages between node and registry: a peer newer than the other may add fields, and the other takes the
message as it understands it; what a node reports stays bounded."""

from __future__ import annotations

import msgspec
import pytest

from gateway import wire


@pytest.mark.parametrize(("message", "body"), [
    (wire.JoinRequest, {"token": "a.b", "csr": "-----BEGIN CERTIFICATE REQUEST-----"}),
    (wire.BatchJoinRequest, {"csr": "-----BEGIN CERTIFICATE REQUEST-----"}),
    (wire.HeartbeatRequest, {"info": {"version": "9.9"}, "desired_version": 3}),
    (wire.AckRequest, {"ids": ["m1"]}),
    (wire.JoinResponse, {"node": "gw-1", "certificate": "c", "ca": "a", "heartbeat_interval": 5}),
    (wire.HeartbeatResponse, {"node": "gw-1", "resource_version": "v1", "heartbeat_interval": 5,
                              "upgrade": {"task": "up-1", "version": "2", "deadline": 60,
                                          "wheels": [{"name": "a.whl", "sha256": "00", "size": 1, "later": 1}]}}),
    (wire.NodeMessage, {"id": "m1", "namespace": "plant", "path": "alarms", "payload": ""}),
    (wire.WorkloadLogRequest, {"workload": "default/app", "tail": 5}),
    (wire.WorkloadActionRequest, {"workload": "default/app", "action": "stop", "actor": "token:ab"}),
    (wire.WorkloadActionAnswer, {"workload": "default/app", "changed": True}),
])
def test_a_field_from_a_newer_peer_is_ignored(message: type[msgspec.Struct], body: dict[str, object]) -> None:
    decoded = msgspec.json.decode(msgspec.json.encode({**body, "added_later": {"any": ["thing"]}}), type=message)
    assert msgspec.to_builtins(decoded) == msgspec.to_builtins(msgspec.convert(body, message))


def test_what_a_node_reports_stays_bounded() -> None:
    too_many = [{"device": f"default/d{i}", "state": "online"} for i in range(wire.MAX_REPORT_DEVICES + 1)]
    with pytest.raises(msgspec.ValidationError, match="twins"):
        msgspec.convert({"twins": too_many}, wire.HeartbeatRequest)
    with pytest.raises(msgspec.ValidationError, match="status"):
        msgspec.convert({"upgrade": {"task": "up-1", "status": "exploded"}}, wire.HeartbeatRequest)
    assert wire.clean_sample({"cpu_percent": 5, "memory_percent": float("nan"), "disk_percent": True,
                              "unknown": 1.0}) == {"cpu_percent": 5.0}


def test_service_events_are_optional_and_bounded() -> None:
    """A node before service events sends none (the registry takes its heartbeat as before); a node's events are
    checked field by field and at most MAX_SERVICE_EVENTS go in one heartbeat."""
    assert msgspec.convert({"info": {"version": "0.2.0"}}, wire.HeartbeatRequest).service_events is None
    event = {"seq": 1, "ts": 1.0, "service": "default/echo", "event": "endpoints", "detail": "1 of 1 ready"}
    taken = msgspec.convert({"service_events": [event]}, wire.HeartbeatRequest).service_events
    assert taken is not None and taken[0].service == "default/echo"
    for bad, field in (({"seq": -1}, "seq"), ({"event": "x" * 33}, "event"), ({"service": ""}, "service"),
                       ({"detail": "x" * (wire.MAX_REASON + 1)}, "detail"), ({"later": 1}, "later")):
        with pytest.raises(msgspec.ValidationError, match=field):
            msgspec.convert({"service_events": [{**event, **bad}]}, wire.HeartbeatRequest)
    with pytest.raises(msgspec.ValidationError, match="service_events"):
        msgspec.convert({"service_events": [event] * (wire.MAX_SERVICE_EVENTS + 1)}, wire.HeartbeatRequest)


def test_an_upgrade_assignment_says_its_kind_and_an_older_registry_means_a_gateway_version() -> None:
    """Registries before OS bundles send no kind: a gateway version. A kind added later still decodes (the node
    refuses that task, not the whole heartbeat answer)."""
    assignment = {"task": "up-1", "version": "2", "deadline": 60,
                  "wheels": [{"name": "fieldgate-os-2.raucb", "sha256": "00", "size": 1}]}
    answer = {"node": "gw-1", "resource_version": "v1", "heartbeat_interval": 5}
    for given, kind in (({}, "gateway"), ({"kind": "os"}, "os"), ({"kind": "firmware"}, "firmware")):
        decoded = msgspec.convert({**answer, "upgrade": {**assignment, **given}}, wire.HeartbeatResponse)
        assert decoded.upgrade is not None and decoded.upgrade.kind == kind

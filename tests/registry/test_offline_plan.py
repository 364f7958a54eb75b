"""Offline failover at the registry (gateway.registry.offline), on the registry store (SQLite and PostgreSQL) with
heartbeats set by hand: a group's plan only once every member reported its consensus settings, with the placements of
the BatchWorkloads with failover and the documents to run them; takeovers adopted and audited, refused when they do
not fit; each member's plan carries its own etcd certificate from the group's CA and no other member's key; and a
registry that starts does not count its own absence as the nodes' downtime."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.registry import access, consensus_ca, offline, workloads
from gateway.registry.ca import CertificateAuthority
from gateway.registry.store import RegistryStore
from gateway.resources.loader import parse_yaml
from gateway.resources.schema import ConsensusSettings, dec_hook
from gateway.wire import FailoverPlan, HeartbeatRequest, MemberTls, Takeover

DOCUMENTS = """\
kind: Secret
name: db
data: {password: s3cret}
---
kind: BatchWorkload
name: app
template:
  command: [sleep, "60"]
  env_from: [{name: DB, secret: db, key: password}]
groups: [{group: g, env: {LINE: g}}]
failover: {after: 10s, move_back: false}
---
kind: BatchWorkload
name: pinned
template: {command: [sleep, "60"]}
groups: [{group: g}]
"""


def consensus(node: str, peer: str = "") -> dict[str, dict[str, str]]:
    return {"consensus": {"peer_url": peer or f"https://{node}.plant:2380", "client_url": "https://127.0.0.1:2379"}}


def beat(node: str, version: str = "", takeovers: list[Takeover] | None = None) -> HeartbeatRequest:
    return HeartbeatRequest(info=consensus(node), failover_version=version, takeovers=takeovers)


async def placements(store: RegistryStore) -> dict[str, str]:
    return {name: node for name, node in await store.database.rows(
        "SELECT name, node FROM workload_placements ORDER BY name")}


async def failover_audit(store: RegistryStore) -> list[dict[str, object]]:
    entries = await access.audit_entries(store, access.cli_caller())
    return [e for e in reversed(entries) if e["action"] == "failover.offline"]


async def test_a_group_plan_and_the_takeovers_its_members_report(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b", "c", "d"):
            await store.add_node(name, name, {}, 1.0, None)
            await store.heartbeat(name, {})
        await store.create_group("g", ["a", "b", "c"], {})
        await workloads.apply_documents(store, parse_yaml(DOCUMENTS, "app.yaml"), "default", access.cli_caller(),
                                        "app.yaml")
        assert await placements(store) == {"app.a": "a", "app.b": "b", "app.c": "c", "pinned.a": "a",
                                           "pinned.b": "b", "pinned.c": "c"}

        # no plan until every member of the group has reported its consensus settings; none outside a group
        await store.heartbeat("a", consensus("a"))
        await store.heartbeat("b", consensus("b"))
        assert await offline.group_plan(store, "a") is None
        assert await offline.plan_for(store, "a", beat("a")) is None
        await store.heartbeat("c", consensus("c"))
        await store.heartbeat("d", consensus("d"))
        assert await offline.group_plan(store, "d") is None
        plan = await offline.group_plan(store, "a")
        assert plan is not None and plan.group == "g"
        assert [(m.name, m.peer_url) for m in plan.members] == [("a", "https://a.plant:2380"),
                                                                ("b", "https://b.plant:2380"),
                                                                ("c", "https://c.plant:2380")]
        # only the BatchWorkload with failover, each instance with its host and what a member needs to run it
        assert sorted((p.workload, p.origin, p.host, p.after) for p in plan.placements) == [
            ("default/app.a", "a", "a", 10.0), ("default/app.b", "b", "b", 10.0), ("default/app.c", "c", "c", 10.0)]
        [app_c] = [p for p in plan.placements if p.origin == "c"]
        workload, secret = app_c.documents
        assert workload["kind"] == "Workload" and workload["name"] == "app.c" and workload["env"] == {"LINE": "g"}
        assert workload["labels"]["origin"] == "c"
        assert secret["kind"] == "Secret" and secret["data"] == {"password": "s3cret"}
        # the same plan is sent once: a node that has its version gets nothing; each member's plan is its own (its
        # certificate), the rest the same
        plan_b = await offline.group_plan(store, "b")
        assert plan_b is not None and plan_b.version != plan.version
        assert (plan_b.members, plan_b.placements) == (plan.members, plan.placements)
        assert await offline.plan_for(store, "b", beat("b", plan_b.version)) is None
        assert (await offline.plan_for(store, "b", beat("b"))) == plan_b
        # a node without consensus settings gets none, and its heartbeat costs no query
        assert await offline.plan_for(store, "b", HeartbeatRequest()) is None

        # b took app.c over while the registry was away: adopted, audited, and the plan now names b
        took = Takeover(workload="default/app.c", origin="c", previous="c", at=time.time() - 30)
        await offline.adopt(store, "b", [took])
        assert (await placements(store))["app.c"] == "b"
        [entry] = await failover_audit(store)
        assert (entry["actor"], entry["object"], entry["outcome"]) == ("node:b", "Workload/default/app.c", "ok")
        assert '"previous": "c"' in str(entry["detail"])
        moved = await offline.plan_for(store, "b", beat("b", plan_b.version))
        assert moved is not None and moved.version != plan.version
        assert next(p.host for p in moved.placements if p.origin == "c") == "b"
        assert "app.c" in {d["name"] for d in (await store.node_documents("b"))[1]}
        assert "app.c" not in {d["name"] for d in (await store.node_documents("c"))[1]}
        # reported again before the node got the plan: nothing changes, nothing more is audited
        await offline.adopt(store, "b", [took])
        assert len(await failover_audit(store)) == 1
        # the scheduler keeps it there (move_back: false), c being back or not
        await workloads.schedule(store)
        assert (await placements(store))["app.c"] == "b"

        # takeovers that do not fit are refused and audited: a node outside the group, an unknown instance, a
        # placement whose origin is not the one named
        await offline.adopt(store, "d", [Takeover(workload="default/app.a", origin="a", previous="a", at=1.0)])
        await offline.adopt(store, "a", [Takeover(workload="default/nope.x", origin="x", previous="x", at=1.0)])
        await offline.adopt(store, "a", [Takeover(workload="default/app.b", origin="c", previous="b", at=1.0)])
        # the heartbeat carrying a refused takeover gets the plan though the node has it: it settles the takeover
        moved_a = await offline.group_plan(store, "a")
        assert moved_a is not None
        again = await offline.plan_for(store, "a", beat("a", moved_a.version, [
            Takeover(workload="default/app.b", origin="c", previous="b", at=1.0)]))
        assert again == moved_a
        refused = (await failover_audit(store))[1:]
        assert [(e["actor"], e["outcome"]) for e in refused] == [
            ("node:d", "refused: no such placement in the node's group"),
            ("node:a", "refused: no such placement in the node's group"),
            ("node:a", "refused: no such placement in the node's group")]
        assert await placements(store) == {"app.a": "a", "app.b": "b", "app.c": "b", "pinned.a": "a",
                                           "pinned.b": "b", "pinned.c": "c"}

        # a member that stops reporting consensus settings ends the plan: nodes that had one are told
        await store.heartbeat("c", {})
        assert await offline.group_plan(store, "a") is None
        gone = await offline.plan_for(store, "a", beat("a", plan.version))
        assert gone is not None and gone.members == [] and gone.placements == []
        assert await offline.plan_for(store, "a", beat("a", gone.version)) is None
        assert await offline.plan_for(store, "a", beat("a")) is None


async def test_a_registry_that_starts_counts_downtime_from_its_start(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b"):
            await store.add_node(name, name, {}, 1.0, None)
            await store.heartbeat(name, {})
        await store.create_group("g", ["a", "b"], {})
        await workloads.apply_documents(store, parse_yaml(DOCUMENTS, "app.yaml"), "default", access.cli_caller(),
                                        "app.yaml")
        # the registry was away for a minute: b's last heartbeat is old, a's fresh (it came back first)
        await store.database.write("UPDATE nodes SET last_heartbeat=? WHERE name=?", time.time() - 60, "b")
        started = time.time() - 2  # the registry started 2 s ago: b has been "down" for 2 s of its watch, not 60
        assert await workloads.schedule(store, started) == 0
        assert (await placements(store))["app.b"] == "b"
        # up for `after` (10 s), b is not down yet either: it has had no 3 heartbeat intervals (1 s) to come back in
        assert await workloads.schedule(store, time.time() - 11) == 0
        assert (await placements(store))["app.b"] == "b"
        # counted from long ago, b is down for longer than `after`: its instance moves
        await workloads.schedule(store, time.time() - 30)
        assert (await placements(store))["app.b"] == "a"


def certificate(tls: MemberTls) -> x509.Certificate:
    return x509.load_pem_x509_certificate(tls.cert.encode())


def public(pem: str) -> bytes:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_each_member_gets_its_own_etcd_certificate_from_the_groups_ca(db_url: str | None,
                                                                            tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b", "x", "y"):
            await store.add_node(name, name, {}, 1.0, None)
            await store.heartbeat(name, {"consensus": {"peer_url": f"https://10.0.0.{ord(name)}:2380",
                                                       "client_url": f"https://{name}.plant:2379"}})
        await store.create_group("g", ["a", "b"], {})
        await store.create_group("h", ["x", "y"], {})
        plans: dict[str, FailoverPlan] = {}
        for name in ("a", "b", "x", "y"):
            plan = await offline.group_plan(store, name)
            assert plan is not None and plan.tls is not None
            plans[name] = plan
        a, b = plans["a"].tls, plans["b"].tls
        assert a is not None and b is not None
        # a's certificate: its name, the hosts of its peer and client URLs, server and client auth, 90 days
        cert = certificate(a)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a"
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.97")]
        assert names.get_values_for_type(x509.DNSName) == ["a.plant"]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(days=89) < lifetime < datetime.timedelta(days=91)
        assert public(a.key) == cert.public_key().public_bytes(serialization.Encoding.DER,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        # signed by the group's own CA: not the registry's (which signs every node's certificate), not another
        # group's; the members of a group share it
        group_ca = x509.load_pem_x509_certificate(a.ca.encode())
        cert.verify_directly_issued_by(group_ca)
        assert a.ca == b.ca and plans["x"].tls is not None and plans["x"].tls.ca != a.ca
        registry_ca = CertificateAuthority.load_or_create(store.data_dir).cert
        assert group_ca.subject != registry_ca.subject
        # the plan for one member carries its own key and no other member's, in any form
        assert a.key != b.key and a.cert != b.cert
        # each member's certificates come at times of its own: a group's etcd members never all restart at once
        assert certificate(a).not_valid_before_utc != certificate(b).not_valid_before_utc
        wire_a = msgspec.json.encode(plans["a"]).decode().replace("\\n", "")  # as it goes down, lines joined

        def material(pem: str) -> str:
            return "".join(line for line in pem.splitlines() if not line.startswith("-----"))

        other_keys = [material(t.key) for n, p in plans.items() if n != "a" and (t := p.tls) is not None]
        assert len(other_keys) == 3 and material(a.key) in wire_a
        assert not any(key in wire_a for key in other_keys)
        assert "PRIVATE KEY" not in repr(plans["a"])
        # the same certificate for every plan while it is current: the plan's version is stable
        assert (await offline.group_plan(store, "a")) == plans["a"]
        # a member that reports other URLs gets a certificate for them (and a new plan version); the others keep theirs
        await store.heartbeat("a", {"consensus": {"peer_url": "https://[fd00::1]:2380",
                                                  "client_url": "https://a.plant:2379"}})
        moved = await offline.group_plan(store, "a")
        assert moved is not None and moved.tls is not None and moved.version != plans["a"].version
        assert moved.tls.key != a.key
        moved_names = certificate(moved.tls).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in moved_names.get_values_for_type(x509.IPAddress)] == ["fd00::1"]
        again_b = await offline.group_plan(store, "b")
        assert again_b is not None and again_b.tls == b
        # a certificate within 30 days of its end is issued again
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=61)
        renewed = consensus_ca.member_tls(store.data_dir, "g", "b", "https://10.0.0.98:2380",
                                          "https://b.plant:2379", now=later)
        assert renewed.cert != b.cert and renewed.key != b.key and renewed.ca == b.ca
        assert certificate(renewed).not_valid_before_utc <= later
        assert certificate(renewed).not_valid_after_utc > later + datetime.timedelta(days=29)
        # nothing is stored: another replica with the registry's CA files hands out the very same material
        replica = tmp_path / "replica"
        replica.mkdir()
        for name in ("ca.pem", "ca.key"):
            (replica / name).write_bytes((store.data_dir / name).read_bytes())
        assert consensus_ca.member_tls(replica, "g", "b", "https://10.0.0.98:2380", "https://b.plant:2379") == b
        assert not (store.data_dir / "consensus").exists()
        # a registry with another CA derives other keys
        other = tmp_path / "other-registry"
        assert consensus_ca.member_tls(other, "g", "b", "https://10.0.0.98:2380", "https://b.plant:2379").key != b.key
        # http:// URLs are not consensus settings any more: the group has no plan
        await store.heartbeat("y", consensus("y", peer="http://y.plant:2380"))
        assert await offline.group_plan(store, "x") is None


def test_a_gateway_document_with_an_http_consensus_url_is_refused_naming_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.peer_url"):
        msgspec.convert({"peer_url": "http://10.0.0.1:2380", "client_url": "https://127.0.0.1:2379"},
                        ConsensusSettings, dec_hook=dec_hook)
    settings = msgspec.convert({"peer_url": "https://10.0.0.1:2380", "client_url": "https://127.0.0.1:2379"},
                               ConsensusSettings, dec_hook=dec_hook)
    assert settings.peer_url == "https://10.0.0.1:2380"


async def test_a_takeover_and_the_scheduler_at_once_leave_one_placement(db_url: str | None, tmp_path: Path) -> None:
    """The registry's own failover and a member's takeover of the same instance, in the same moment: each reads the
    placements and then writes them, never from a reading the other changed; the takeover wins."""
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b", "c"):
            await store.add_node(name, name, {}, 1.0, None)
            await store.heartbeat(name, {})
        await store.create_group("g", ["a", "b", "c"], {})
        await workloads.apply_documents(store, parse_yaml(DOCUMENTS, "app.yaml"), "default", access.cli_caller(),
                                        "app.yaml")
        await store.database.write("UPDATE nodes SET last_heartbeat=? WHERE name=?", time.time() - 60, "b")
        takeover = Takeover(workload="default/app.b", origin="b", previous="b", at=time.time())
        for _ in range(5):
            await asyncio.gather(workloads.schedule(store), offline.adopt(store, "c", [takeover]))
            rows = await store.database.rows("SELECT node FROM workload_placements WHERE name='app.b'")
            assert [node for (node,) in rows] == ["c"]

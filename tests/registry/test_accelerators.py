"""Accelerators and privileged workloads at a real registry with three real gateway processes: a fake accelerator
declared on one gateway draws the workload that asks for it there only, one asking for more than the fleet has
stays pending with the reason, and a privileged version is applied by an admin but refused to an operator's
rollback."""

from __future__ import annotations

import json
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import add_user, login
from tests.registry.test_batch_workloads import WEB_APP, Gateway, views

pytestmark = pytest.mark.beside  # several real gateways and a registry, mostly waiting

ACCELERATOR = "example.com/npu"


def workload(name: str, count: int, **extra: Any) -> str:
    body = {"kind": "Workload", "name": name, "node_selector": {"line": "a"},
            "command": [sys.executable, str(WEB_APP)], "ports": [{"name": "http"}],
            "accelerators": {ACCELERATOR: count}, "restart_delay": "200ms", "stop_grace": "2s", **extra}
    return json.dumps(body)


@pytest.fixture
def fleet(registry: Registry, tmp_path: Path) -> Iterator[list[Gateway]]:
    started = [Gateway(registry, tmp_path, f"gw-{i}") for i in (1, 2, 3)]
    for gateway in started:  # gw-2 declares two; no gateway reads the CDI specs of this machine
        offer = f"accelerators: {{{ACCELERATOR}: 2}}, " if gateway.name == "gw-2" else ""
        gateway.config.write_text(gateway.config.read_text() +
                                  f"workloads: {{{offer}cdi_dirs: [{tmp_path / 'no-cdi'}]}}\n")
    try:
        for gateway in started:
            gateway.start()
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def test_accelerators_place_only_where_they_are_free(registry: Registry, fleet: list[Gateway],
                                                     tmp_path: Path) -> None:
    wait_until(lambda: all(registry.nodes()[g.name]["info"].get("accelerators") is not None for g in fleet),
               what="three heartbeats with accelerators")
    assert registry.nodes()["gw-2"]["info"]["accelerators"] == {ACCELERATOR: 2}
    assert registry.nodes()["gw-1"]["info"]["accelerators"] == {}

    (tmp_path / "npu.yaml").write_text(workload("infer", 2))
    registry.cli("apply", "-f", str(tmp_path / "npu.yaml"))

    def running_on_gw2() -> dict[str, Any] | None:
        view = views(registry).get(("infer", "gw-2"))
        return view if view and view["status"] == "running" else None

    wait_until(running_on_gw2, timeout=30, what="infer running on gw-2")
    assert [node for name, node in views(registry) if name == "infer"] == ["gw-2"]

    # gw-2's two are taken: a second workload asking for one stays pending, saying why
    (tmp_path / "more.yaml").write_text(workload("more", 1))
    registry.cli("apply", "-f", str(tmp_path / "more.yaml"))
    pending = views(registry)[("more", None)]
    assert pending["status"] == "pending"
    assert pending["reason"] == (f"pending: needs 1 x {ACCELERATOR} on a node; none has it free (gw-1: {ACCELERATOR} "
                                 f"0 of 0 free, 1 short; gw-2: {ACCELERATOR} 0 of 2 free, 1 short; gw-3: "
                                 f"{ACCELERATOR} 0 of 0 free, 1 short)")
    # one asking for more than any node has stays pending too, and the first keeps running where it is
    (tmp_path / "huge.yaml").write_text(workload("huge", 3))
    registry.cli("apply", "-f", str(tmp_path / "huge.yaml"))
    assert "needs 3 x example.com/npu on a node" in views(registry)[("huge", None)]["reason"]
    assert running_on_gw2() is not None
    # the status page and the API say the same
    token = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        listed = {w["name"]: w for w in api.get("/api/v1/workloads").json() if w["node"] is None}
        assert listed["more"]["reason"] == pending["reason"]

    # the first goes: the second takes its accelerators on gw-2
    registry.cli("delete", "Workload", "default/infer")
    wait_until(lambda: (views(registry).get(("more", "gw-2")) or {}).get("status") == "running", timeout=30,
               what="more running on gw-2")


def test_privileged_is_for_admins(registry: Registry, tmp_path: Path) -> None:
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    tokens = {role: registry.cli("token", "create", "--role", role).stdout.strip() for role in ("operator", "admin")}

    def client(role: str) -> httpx.Client:
        return httpx.Client(base_url=registry.url, verify=context, timeout=10,
                            headers={"Authorization": f"Bearer {tokens[role]}"})

    document = {"kind": "Workload", "name": "tool", "runtime": "container", "image": "localhost/tool:1",
                "node": "gw-9", "security": {"privileged": True}, "annotations": {"team.example.com/owner": "ops"}}
    with client("admin") as admin, client("operator") as operator:
        applied = admin.post("/api/v1/documents", json=[document])
        assert applied.status_code == 200, applied.text
        calmer = {**document, "security": {"run_as_user": 1000}}
        assert admin.post("/api/v1/documents", json=[calmer]).status_code == 200
        refused = operator.post("/api/v1/workloads/Workload/default/tool/rollback", json={"version": 1})
        assert refused.status_code == 400, refused.text
        assert ("$.security.privileged: only an admin may run a workload privileged (the operator role cannot; "
                "it needs apps.privileged)"
                in refused.text)
        versions = admin.get("/api/v1/workloads/Workload/default/tool/versions").json()
        assert len(versions) == 2 and versions[-1]["current"]  # nothing applied
        accepted = admin.post("/api/v1/workloads/Workload/default/tool/rollback", json={"version": 1})
        assert accepted.status_code == 200, accepted.text
        assert admin.get("/api/v1/workloads/Workload/default/tool/versions").json()[-1]["document"]["security"] == \
            {"privileged": True}
    add_user(registry, tmp_path, "vera", "--role", "viewer")
    with login(registry, "vera") as pages:  # the app page shows the current version's annotations
        page = pages.get("/workloads/default/tool")
        assert page.status_code == 200 and '<dl id="annotations"><dt>team.example.com/owner</dt><dd>ops</dd>' in \
            page.text
    audit = registry.cli("audit").stdout
    assert "document.rollback" in audit and "refused: Workload default/tool version 1" in audit

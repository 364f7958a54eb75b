"""Update strategies with real processes (Recreate never mixes versions; RollingUpdate keeps within max_surge and
max_unavailable), and a Kubernetes Deployment imported and run under a real gateway until healthy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from gateway.importers import kubernetes
from gateway.importers.cli import dump
from gateway.resources.schema import Strategy
from gateway.testing import wait_until
from tests.workloads.conftest import APPS, PYTHON, Node
from tests.workloads.test_supervisor import ask_app, ready_instances, web_workload


def test_strategies_are_validated_and_percentages_resolve_against_replicas() -> None:
    def strategy(raw: dict[str, Any]) -> Strategy:
        return msgspec.convert(raw, Strategy)

    assert strategy({"max_surge": "25%", "max_unavailable": "25%"}).bounds(10) == (3, 2)  # surge up, unavailable down
    assert strategy({}).bounds(4) == (1, 0)
    assert strategy({"max_surge": 0, "max_unavailable": "10%"}).bounds(3) == (0, 1)  # never stuck at (0, 0)
    for bad, message in (({"max_surge": 0, "max_unavailable": 0}, "cannot both be 0"),
                         ({"max_surge": 0}, "cannot both be 0"),
                         ({"type": "Recreate", "max_surge": 1}, "are for type RollingUpdate"),
                         ({"max_surge": "150%"}, "Expected"),
                         ({"max_unavailable": -1}, "Expected"),
                         ({"type": "BlueGreen"}, "Invalid enum value")):
        with pytest.raises(msgspec.ValidationError, match=message):
            strategy(bad)


class Watch:
    """Samples a workload's instances while it updates: how many there are, how many are ready, which versions."""

    def __init__(self, node: Node, name: str) -> None:
        self.node, self.name = node, name
        self.counts: list[int] = []
        self.ready: list[int] = []
        self.versions: list[set[int]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            workload = await self.node.workload(self.name)
            instances = workload["instances"]
            self.counts.append(len(instances))
            self.ready.append(sum(1 for i in instances if i["ready"]))
            self.versions.append({i["version"] for i in instances})
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self.task.cancel()


async def update(node: Node, name: str, replicas: int, strategy: str) -> tuple[list[dict[str, Any]], Watch]:
    """Deploy version one, update to version two with `strategy`; the instances before and the watch during."""
    first = yaml.safe_load(web_workload(name, replicas=replicas, extra=f"strategy: {strategy}\n"))
    assert (await node.api.post("/api/v1/workloads", json=first)).status_code == 201
    old = await ready_instances(node, name, replicas)
    watch = Watch(node, name)
    second = yaml.safe_load(web_workload(name, version="two", replicas=replicas, extra=f"strategy: {strategy}\n"))
    assert (await node.api.post("/api/v1/workloads", json=second)).status_code == 201

    async def all_new() -> list[dict[str, Any]] | None:
        workload = await node.workload(name)
        instances = workload["instances"]
        done = (workload["status"] == "running" and len(instances) == replicas
                and all(i["version"] == 2 and i["ready"] for i in instances))
        return instances if done else None

    new = await wait_until(all_new, timeout=60)
    watch.stop()
    assert {(await ask_app(i))["version"] for i in new} == {"two"}
    assert not {i["pid"] for i in old} & {i["pid"] for i in new}
    return old, watch


async def test_recreate_stops_every_old_instance_before_a_new_one_starts(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    old, watch = await update(node, "web", 2, "{type: Recreate}")
    assert all(len(versions) <= 1 for versions in watch.versions), watch.versions
    assert max(watch.counts) <= 2
    # the gap, from the workload's own record (sampling can miss a short one): both old instances stopped before the
    # first new one started
    response = await node.api.get("/api/v1/workloads/default/web/events")
    events = [(e["event"], e["reason"]) for e in response.json()]
    old_pids = {f"pid {i['pid']}" for i in old}
    stopped = [n for n, (event, _) in enumerate(events) if event == "stopped"]
    started_new = [n for n, (event, reason) in enumerate(events) if event == "started" and reason not in old_pids]
    assert len(stopped) == 2 and len(started_new) == 2, events
    assert max(stopped) < min(started_new), f"Recreate leaves no gap: {events}"


async def test_rolling_update_keeps_within_surge_and_unavailable(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    _, watch = await update(node, "no-surge", 3, "{type: RollingUpdate, max_surge: 0, max_unavailable: 1}")
    assert max(watch.counts) <= 3, watch.counts
    assert min(watch.ready) >= 2, watch.ready
    assert {1, 2} in watch.versions, "old and new serve side by side"

    _, watch = await update(node, "surge", 2, "{type: RollingUpdate, max_surge: 100%, max_unavailable: 0}")
    assert max(watch.counts) == 4, watch.counts
    assert min(watch.ready) >= 2, watch.ready


async def test_one_replica_with_surge_starts_the_new_instance_before_stopping_the_old(
        start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    _, watch = await update(node, "single", 1, "{type: RollingUpdate, max_surge: 1}")
    assert max(watch.counts) == 2 and min(watch.ready) >= 1, (watch.counts, watch.ready)


DEPLOYMENT = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: web-db}}
data: {{password: czNjcjN0}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: 2
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: web:1
        command: [{PYTHON}, {APPS / "web.py"}]
        env:
        - {{name: APP_VERSION, value: "one"}}
        - name: DB_PASSWORD
          valueFrom: {{secretKeyRef: {{name: web-db, key: password}}}}
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe:
          httpGet: {{path: /health, port: 8080}}
          periodSeconds: 1
        resources:
          limits: {{memory: 256Mi, cpu: "1"}}
          requests: {{memory: 64Mi}}
        volumeMounts:
        - {{name: scratch, mountPath: /tmp/scratch}}
        - {{name: data, mountPath: /data}}
      volumes:
      - {{name: scratch, emptyDir: {{}}}}
      - {{name: data, persistentVolumeClaim: {{claimName: web-data}}}}
"""


async def test_an_imported_deployment_runs_healthy_under_a_gateway(start_node: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    source = tmp_path / "deploy.yaml"
    source.write_text(DEPLOYMENT)
    documents = kubernetes.import_files([source], runtime="process").all_documents()
    node: Node = await start_node(dump(documents))
    instances = await ready_instances(node, "web", 2)
    answers = [await ask_app(i) for i in instances]
    assert {a["version"] for a in answers} == {"one"} and {a["password"] for a in answers} == {"s3cr3t"}
    workload = await node.workload("web")
    assert workload["status"] == "running" and workload["replicas"] == 2
    assert workload["annotations"] == {kubernetes.IMAGE_ANNOTATION: "web:1"}
    [version] = (await node.api.get("/api/v1/workloads/default/web/versions")).json()
    assert version["spec"]["strategy"] == {"max_surge": 1, "max_unavailable": 0}  # RollingUpdate: the default type
    assert version["spec"]["limits"] == {"memory": 256 << 20, "cpu": 1.0}

"""A Kubernetes Deployment, imported with `fieldgate import kubernetes`, runs as a container under a real gateway:
the image built here, its port mapped, its readiness probe as the health check, its limits and volumes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from container_helpers import Images, Node, podman, wait_until
from fieldgate_container.runtime import LABEL_WORKLOAD

from gateway.importers import kubernetes
from gateway.importers.cli import dump


@pytest.fixture
def publish_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", "127.0.0.1")


def deployment(image: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: 1
  strategy: {{type: Recreate}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        imagePullPolicy: Never
        command: [/bin/busybox, httpd, -f, -p, "8080", -h, /www]
        env: [{{name: GREETING, value: hello}}]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe:
          httpGet: {{path: /index.html, port: 8080}}
          periodSeconds: 1
        resources:
          limits: {{cpu: 500m, memory: 64Mi}}
        volumeMounts: [{{name: cache, mountPath: /cache}}]
      volumes: [{{name: cache, emptyDir: {{}}}}]
"""


@pytest.mark.usefixtures("publish_on_loopback")
async def test_an_imported_deployment_runs_as_a_container(images: Images, start_node: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    source = tmp_path / "deploy.yaml"
    source.write_text(deployment(images.tag(1)))
    node: Node = await start_node(dump(kubernetes.import_files([source]).all_documents()))

    async def running() -> dict[str, Any] | None:
        found = await node.workload("web")
        return found if found["status"] == "running" and found["instances"][0]["ready"] else None

    found = await wait_until(running, timeout=60)
    async with httpx.AsyncClient(timeout=5) as client:
        port = found["instances"][0]["ports"]["http"]
        assert (await client.get(f"http://127.0.0.1:{port}/index.html")).text == "version 1\n"
    [name] = podman("ps", "--filter", f"label={LABEL_WORKLOAD}=default/web", "--format", "{{.Names}}").split()
    inspected = json.loads(podman("inspect", name))[0]
    assert inspected["HostConfig"]["Memory"] == 64 << 20 and inspected["HostConfig"]["NanoCpus"] == 500_000_000
    assert "/cache" in {mount["Destination"] for mount in inspected["Mounts"]}
    assert "GREETING=hello" in inspected["Config"]["Env"]

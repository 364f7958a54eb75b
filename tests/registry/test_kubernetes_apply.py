"""`registry apply -f` takes Kubernetes Deployments and KubeEdge EdgeApplications as they are: converted on the way
in, with the same file/document/field-path errors as `fieldgate import kubernetes`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import ResourceError

DATA = Path(__file__).resolve().parents[1] / "importers" / "data"


async def test_deployments_and_edge_applications_apply_directly(db_url: str | None, tmp_path: Path) -> None:
    from gateway.registry.cli import _apply
    from gateway.registry.store import RegistryStore

    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b"):
            await store.add_node(name, name, {}, 1.0, None)
        await store.create_group("hangzhou", ["a"], {})
        await store.create_group("beijing", ["b"], {})
        lines = await _apply(store, DATA / "web-deployment.yaml")
        lines += await _apply(store, DATA / "edge-application.yaml")
        assert len(lines) == 4, lines
        stored = {(kind, name): json.loads(doc) for kind, _, name, doc, _ in await store.documents.of_kinds(
            ("Workload", "BatchWorkload", "ConfigItem", "Secret"))}
        assert set(stored) == {("Workload", "nginx-deployment"), ("BatchWorkload", "nginx-app"),
                               ("ConfigItem", "web-settings"), ("Secret", "web-db")}
        workload = stored[("Workload", "nginx-deployment")]
        assert workload["image"] == "nginx:1.14.2" and workload["node_selector"] == {"site": "plant-a"}
        assert workload["strategy"] == {"max_surge": "25%", "max_unavailable": 0}
        batch = stored[("BatchWorkload", "nginx-app")]
        assert [g["group"] for g in batch["groups"]] == ["hangzhou", "beijing"]
        placed = {d["name"]: d for d in (await store.node_documents("a"))[1] if d["kind"] == "Workload"}
        assert placed["nginx-app.a"]["image"] == "nginx:1.15" and placed["nginx-app.a"]["replicas"] == 3
        assert placed["nginx-app.a"]["labels"]["app"] == "nginx"  # the Deployment's labels reach every node

        bad = tmp_path / "deploy.yaml"
        bad.write_text((DATA / "web-deployment.yaml").read_text().replace(
            "        imagePullPolicy: IfNotPresent\n",
            "        imagePullPolicy: IfNotPresent\n        stdin: true\n"))
        with pytest.raises(ResourceError) as caught:
            await _apply(store, bad)
        assert caught.value.problems == [
            f"{bad}: document 3: $.spec.template.spec.containers[0].stdin: has no fieldgate equivalent"]

"""Kubernetes import: Deployments and EdgeApplications (test data in the shape of the public examples) become
Workload and BatchWorkload documents that `fieldgate check` passes; what cannot map is an error naming its path."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.errors import ResourceError
from gateway.importers import kubernetes

DATA = Path(__file__).resolve().parent / "data"


def fieldgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_deployment_with_its_config_map_and_secret_imports_and_checks_clean(tmp_path: Path) -> None:
    result = kubernetes.import_files([DATA / "web-deployment.yaml"])
    config_item, secret, workload = result.all_documents()
    assert config_item == {"kind": "ConfigItem", "name": "web-settings",
                           "data": {"LOG_LEVEL": "info", "GREETING": "hello"}}
    assert secret["kind"] == "Secret" and secret["data"] == {"password": "s3cr3t"}
    assert workload["kind"] == "Workload" and workload["name"] == "nginx-deployment"
    assert workload["runtime"] == "container" and workload["image"] == "nginx:1.14.2"
    assert workload["replicas"] == 2 and workload["node_selector"] == {"site": "plant-a"}
    assert workload["strategy"] == {"type": "RollingUpdate", "max_surge": "25%", "max_unavailable": 0}
    assert workload["labels"] == {"app": "nginx"} and workload["annotations"]["team/owner"] == "plant-it"
    assert workload["requests"] == {"cpu": 0.25, "memory": "64Mi"}
    assert kubernetes.REQUESTS_ANNOTATION not in workload["annotations"]
    assert workload["limits"] == {"cpu": 0.5, "memory": "128Mi"} and workload["stop_grace"] == 5
    assert workload["env"] == {"APP_VERSION": "one"}
    assert workload["env_from"] == [
        {"name": "DB_PASSWORD", "secret": "web-db", "key": "password"},
        {"name": "MODE", "config_item": "web-settings", "key": "LOG_LEVEL"},
        {"name": "WEB_GREETING", "config_item": "web-settings", "key": "GREETING"},
        {"name": "WEB_LOG_LEVEL", "config_item": "web-settings", "key": "LOG_LEVEL"}]
    assert workload["ports"] == [{"name": "http", "container_port": 80, "protocol": "tcp"}]
    assert workload["health"] == {"type": "http", "path": "/health", "port": "http", "initial_delay": 1,
                                  "interval": 5}
    assert workload["volumes"] == [
        {"name": "html", "mount_path": "/usr/share/nginx/html", "host_path": "/srv/www", "read_only": True},
        {"name": "cache", "mount_path": "/var/cache/nginx", "scratch": True},
        {"name": "web-data", "mount_path": "/data", "persistent": True}]

    out = tmp_path / "out"
    done = fieldgate("import", "kubernetes", str(DATA / "web-deployment.yaml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    (out / "gateway.yaml").write_text(textwrap.dedent("""\
        kind: Gateway
        name: edge-1
        workloads: {host_path_prefixes: [/srv]}
        """))
    checked = fieldgate("check", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_edge_application_becomes_a_batch_workload_with_its_groups() -> None:
    [batch] = kubernetes.import_files([DATA / "edge-application.yaml"]).all_documents()
    assert batch["kind"] == "BatchWorkload" and batch["name"] == "nginx-app"
    template = batch["template"]
    assert template["image"] == "nginx:1.14.2" and template["args"] == ["-g", "daemon off;"]
    assert template["replicas"] == 2 and "name" not in template and template["labels"] == {"app": "nginx"}
    assert batch["groups"] == [
        {"group": "hangzhou", "replicas": 3, "image_tag": "1.15"},
        {"group": "beijing", "replicas": 1, "image": "registry.example.com/nginx:1.14.2", "args": ["-g"],
         "env": {"SITE": "beijing"}}]


BAD = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: bad}}
  strategy: {type: Recreate}
  template:
    metadata: {labels: {app: bad}}
    spec:
      tolerations: [{key: edge, operator: Exists}]
      containers:
      - name: app
        image: app:1
        startupProbe: {exec: {command: [true]}}
        env:
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        envFrom: [{configMapRef: {name: elsewhere}}]
        ports: [{containerPort: 9000, protocol: SCTP}]
        resources: {limits: {ephemeral-storage: 1Gi}}
        volumeMounts: [{name: conf, mountPath: /conf, subPath: app.ini}]
      - name: sidecar
        image: sidecar:1
      volumes: [{name: conf, configMap: {name: app}}]
---
apiVersion: v1
kind: Service
metadata: {name: bad}
"""


def test_fields_that_cannot_map_are_errors_naming_file_document_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "deploy.yaml"
    bad.write_text(BAD)
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([bad])
    pod = f"{bad}: document 1: $.spec.template.spec"
    assert sorted(caught.value.problems) == sorted([
        f"{pod}.tolerations: has no fieldgate equivalent",
        f"{pod}.volumes[0].configMap: has no fieldgate equivalent",
        f"{pod}.volumes[0]: give hostPath, emptyDir or persistentVolumeClaim (the volume kinds fieldgate has)",
        f"{pod}.containers[0].startupProbe: has no fieldgate equivalent",
        f"{pod}.containers[0].env[0].valueFrom.fieldRef: has no fieldgate equivalent",
        f"{pod}.containers[0].envFrom[0].configMapRef.name: 'elsewhere': give its configMap document in the same "
        "import (its keys become env_from entries)",
        f"{pod}.containers[0].ports[0].protocol: 'SCTP': fieldgate maps TCP and UDP",
        f"{pod}.containers[0].resources.limits.ephemeral-storage: has no fieldgate equivalent",
        f"{pod}.containers[0].volumeMounts[0].subPath: has no fieldgate equivalent",
        f"{pod}.containers[0].volumeMounts[0].name: 'conf' is not a volume of the pod (or not one that maps)",
        f"{bad}: document 2: $.kind: v1 Service cannot be imported (Deployment apps/v1, EdgeApplication "
        "apps.kubeedge.io/v1alpha1, ConfigMap v1 and Secret v1 can)",
    ])
    done = fieldgate("import", "kubernetes", str(bad))
    assert done.returncode == 2 and done.stdout == ""
    assert (f"fieldgate import: {pod}.containers[0].startupProbe: has no fieldgate equivalent"
            in done.stderr.splitlines())


POD = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      securityContext: {runAsUser: 1000}
      initContainers:
      - name: setup
        image: tools:1
        command: [sh, -c, "echo ready > /data/state"]
        volumeMounts: [{name: data, mountPath: /data}]
      containers:
      - name: web
        image: web:1
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /, port: 8080}}
        env: [{name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}]
        resources: {limits: {memory: 64Mi}, requests: {cpu: 100m}}
        lifecycle: {preStop: {exec: {command: [sh, -c, "sleep 1"]}}}
        volumeMounts: [{name: data, mountPath: /www, readOnly: true}]
      - name: agent
        image: agent:1
        imagePullPolicy: IfNotPresent
        args: [--target, "http://127.0.0.1:8080"]
        env: [{name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}]
        livenessProbe: {exec: {command: [agent, --check]}, periodSeconds: 5}
        securityContext: {readOnlyRootFilesystem: true}
        resources: {limits: {cpu: 250m}}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast}
"""

BAD_POD = (POD.replace("imagePullPolicy: IfNotPresent\n        args:", "imagePullPolicy: Always\n        stdin: true\n"
                       "        lifecycle: {postStart: {exec: {command: [x]}}}\n        args:")
           .replace("key: mode}}}]\n        livenessProbe", "key: speed}}}]\n        livenessProbe")
           .replace("mountPath: /data}]\n      containers", "mountPath: /data}]\n        tty: true\n      containers"))


def test_a_pods_requests_are_its_containers_together_or_its_largest_init_container(tmp_path: Path) -> None:
    source = tmp_path / "shop.yaml"
    source.write_text(POD.replace("requests: {cpu: 100m}", "requests: {cpu: 100m, memory: 64Mi}")
                      .replace("resources: {limits: {cpu: 250m}}",
                               "resources: {limits: {cpu: 250m}, requests: {cpu: 150m, memory: 32Mi}}")
                      .replace("volumeMounts: [{name: data, mountPath: /data}]\n      containers",
                               "volumeMounts: [{name: data, mountPath: /data}]\n"
                               "        resources: {requests: {memory: 1Gi, cpu: 50m}}\n      containers"))
    workload = next(d for d in kubernetes.import_files([source]).all_documents() if d["kind"] == "Workload")
    assert workload["requests"] == {"cpu": 0.25, "memory": 1 << 30}


def test_a_deployment_of_several_containers_and_init_containers_becomes_a_pod(tmp_path: Path) -> None:
    source = tmp_path / "shop.yaml"
    source.write_text(POD)
    config_item, workload = sorted(kubernetes.import_files([source]).all_documents(), key=lambda d: d["kind"])
    assert config_item["kind"] == "ConfigItem"
    assert "image" not in workload and "command" not in workload and "health" not in workload
    assert workload["init_containers"] == [
        {"name": "setup", "image": "tools:1", "command": ["sh", "-c", "echo ready > /data/state"],
         "security": {"run_as_user": 1000}, "volume_mounts": [{"name": "data", "mount_path": "/data"}]}]
    assert workload["containers"] == [
        {"name": "web", "image": "web:1", "ports": [{"name": "http", "container_port": 8080, "protocol": "tcp"}],
         "health": {"type": "http", "path": "/", "port": "http"}, "limits": {"memory": "64Mi"},
         "security": {"run_as_user": 1000},
         "volume_mounts": [{"name": "data", "mount_path": "/www", "read_only": True}]},
        {"name": "agent", "image": "agent:1", "args": ["--target", "http://127.0.0.1:8080"],
         "health": {"type": "exec", "command": ["agent", "--check"], "interval": 5}, "limits": {"cpu": 0.25},
         "security": {"run_as_user": 1000, "read_only_root_filesystem": True},
         "volume_mounts": [{"name": "data", "mount_path": "/data"}]}]
    assert workload["volumes"] == [{"name": "data", "scratch": True}]
    assert workload["env_from"] == [{"name": "MODE", "config_item": "settings", "key": "mode"}]
    assert workload["image_pull_policy"] == "IfNotPresent"
    assert workload["lifecycle"] == {"pre_stop": {"type": "exec", "command": ["sh", "-c", "sleep 1"]}}
    assert workload["requests"] == {"cpu": 0.1}  # the pod's: only web asks
    assert "annotations" not in workload  # nothing left that the registry does not place by
    written = tmp_path / "fieldgate.yaml"
    done = fieldgate("import", "kubernetes", str(source), "-o", str(written))
    assert done.returncode == 0, done.stderr
    checked = fieldgate("check", str(written))
    assert checked.returncode == 0, checked.stderr


def test_what_a_pod_cannot_map_is_named_by_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "shop.yaml"
    bad.write_text(BAD_POD)
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([bad])
    pod = f"{bad}: document 1: $.spec.template.spec"
    assert sorted(caught.value.problems) == sorted([
        f"{pod}.initContainers[0].tty: has no fieldgate equivalent",
        f"{pod}.containers[1].stdin: has no fieldgate equivalent",
        f"{pod}.containers[1].imagePullPolicy: differs from another container's; a Workload has one "
        "image_pull_policy",
        f"{pod}.containers[1].env: MODE comes from elsewhere in $.spec.template.spec.containers[0]; a Workload's "
        "env_from is the same for all its containers",
        f"{pod}.containers[1].lifecycle: fieldgate runs lifecycle hooks in the first app container only",
    ])
    source = tmp_path / "good.yaml"
    source.write_text(POD)
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([source], runtime="process")
    assert f"{source}: document 1: $.spec.template.spec.containers[1]: the process runtime runs one command: " \
           "several containers and init containers need the container runtime" in caught.value.problems


def test_an_edge_application_names_the_paths_inside_its_manifests(tmp_path: Path) -> None:
    text = (DATA / "edge-application.yaml").read_text().replace("args: [", "lifecycle: {postStart: {tcpSocket: "
                                                                "{port: 80}}}\n              args: [")
    text = text.replace("operator: replace\n          value: \"1.15\"", "operator: add\n          value: \"1.15\"")
    app = tmp_path / "app.yaml"
    app.write_text(text)
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([app])
    assert caught.value.problems == [
        f"{app}: document 1: $.spec.workloadTemplate.manifests[0].spec.template.spec.containers[0].lifecycle"
        ".postStart.tcpSocket: has no fieldgate equivalent",
        f"{app}: document 1: $.spec.workloadScope.targetNodeGroups[0].overriders.imageOverriders[0].operator: "
        "fieldgate replaces image parts only (operator replace)"]


def test_values_the_schema_refuses_are_named_and_hostile_files_are_bounded(tmp_path: Path) -> None:
    zero = tmp_path / "zero.yaml"
    zero.write_text((DATA / "web-deployment.yaml").read_text().replace("maxSurge: 25%", "maxSurge: 0"))
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([zero])
    [problem] = caught.value.problems
    assert problem.startswith(f"{zero}: document 3: the Workload it makes: $.strategy: max_surge and "
                              "max_unavailable cannot both be 0")
    deep = tmp_path / "deep.yaml"
    deep.write_text("apiVersion: apps/v1\nkind: Deployment\nspec: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([deep])
    assert caught.value.problems[0].startswith(f"{deep}: document 1: nests deeper than")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * kubernetes.MAX_FILE_BYTES + "\n")
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([big])
    assert caught.value.problems == [f"{big}: larger than {kubernetes.MAX_FILE_BYTES} bytes"]


def test_an_edge_application_of_a_pod_overrides_no_image_per_group(tmp_path: Path) -> None:
    ports = "              ports:\n              - containerPort: 80\n"
    sidecar = ports + "            - name: agent\n              image: a:1\n"
    text = (DATA / "edge-application.yaml").read_text().replace(ports, sidecar, 1)
    app = tmp_path / "app.yaml"
    app.write_text(text)
    with pytest.raises(ResourceError) as caught:
        kubernetes.import_files([app])
    groups = f"{app}: document 1: $.spec.workloadScope.targetNodeGroups"
    assert caught.value.problems == [
        f"{groups}[{i}].overriders.{name}: a Deployment of several containers is not overridden per container (give "
        "the group a Deployment of its own)" for i, name in ((0, "imageOverriders"), (1, "imageOverriders"),
                                                             (1, "argsOverriders"))]
    without = tmp_path / "without.yaml"
    without.write_text(re.sub(r"        (imageOverriders|argsOverriders):\n(        [- ].*\n)+", "", text))
    [batch] = kubernetes.import_files([without]).all_documents()
    assert [c["name"] for c in batch["template"]["containers"]] == ["nginx", "agent"]
    assert batch["groups"][1]["env"]

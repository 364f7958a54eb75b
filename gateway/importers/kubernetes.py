"""Kubernetes `apps/v1` Deployment and KubeEdge `apps.kubeedge.io/v1alpha1` EdgeApplication documents to Workload and
BatchWorkload documents (v1 ConfigMap and Secret documents given alongside become ConfigItem and Secret documents).

A field with no fieldgate equivalent is an error, never dropped: `FILE: document N: $.path.of.field: why`.
A pod of several containers, or with initContainers, becomes a Workload with `containers` and `init_containers`.
Resource requests become the Workload's `requests` (cpu, memory) and `accelerators`; any other is kept in the
annotation `fieldgate.io/requests`. With the
`process` runtime the container's command runs on the node and its image is kept in the annotation
`fieldgate.io/image`.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any

import msgspec

from gateway.errors import ResourceError
from gateway.importers import ImportResult
from gateway.resources.loader import Source, format_validation_error, read_files
from gateway.resources.schema import AnyDocument, dec_hook

MAX_FILE_BYTES = 4 << 20
REQUESTS_ANNOTATION = "fieldgate.io/requests"
IMAGE_ANNOTATION = "fieldgate.io/image"  # the process runtime runs the container's command, not its image
_NAME = re.compile(r"^[a-z0-9]+([-.][a-z0-9]+)*$")
_PORT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|K|M|G|k)?$")
_MEMORY_UNITS = {"": "", "Ki": "Ki", "Mi": "Mi", "Gi": "Gi", "K": "k", "k": "k", "M": "M", "G": "G"}
_ACCELERATOR = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
DEPLOYMENT = ("apps/v1", "Deployment")
EDGE_APPLICATION = ("apps.kubeedge.io/v1alpha1", "EdgeApplication")


def is_kubernetes(raw: Any) -> bool:
    """Whether a raw document is one this module converts (by apiVersion and kind)."""
    return isinstance(raw, dict) and (raw.get("apiVersion"), raw.get("kind")) in (
        DEPLOYMENT, EDGE_APPLICATION, ("v1", "ConfigMap"), ("v1", "Secret"))


class _Problems(Exception):
    """Collects `$.path: message` lines of one document."""

    def __init__(self) -> None:
        super().__init__("problems")
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")


def import_files(paths: list[Path], runtime: str = "container") -> ImportResult:
    """Convert every document of the files; ResourceError lists every problem of every file."""
    raw = read_files(paths, MAX_FILE_BYTES)
    converted = convert_documents(raw, runtime)
    problems = []
    for source, doc in converted:
        try:
            msgspec.convert(doc, AnyDocument, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(f"{source.prefix()}: the {doc['kind']} it makes: {format_validation_error(exc, doc)}")
    if problems:
        raise ResourceError(problems)
    result = ImportResult()
    for path in paths:
        result.documents[str(path)] = []
    for source, doc in converted:
        result.documents.setdefault(source.file, []).append(doc)
    return result


def convert_documents(raw: list[tuple[Source, Any]], runtime: str = "container",
                      keep_others: bool = False) -> list[tuple[Source, Any]]:
    """Deployments, EdgeApplications, ConfigMaps and Secrets as fieldgate documents (other documents kept as they
    are when `keep_others`, else refused); ResourceError with a line per field that cannot map."""
    config_maps = {_key(doc): doc for _, doc in raw if _kind(doc) == ("v1", "ConfigMap")}
    secrets = {_key(doc): doc for _, doc in raw if _kind(doc) == ("v1", "Secret")}
    out: list[tuple[Source, Any]] = []
    problems: list[str] = []
    for source, doc in raw:
        found = _Problems()
        kind = _kind(doc)
        converted: Any = None
        if kind == DEPLOYMENT:
            converted = _deployment(found, "$", doc, runtime, config_maps, secrets)
        elif kind == EDGE_APPLICATION:
            converted = _edge_application(found, doc, runtime, config_maps, secrets)
        elif kind == ("v1", "ConfigMap"):
            converted = _values(found, doc, "ConfigItem")
        elif kind == ("v1", "Secret"):
            converted = _values(found, doc, "Secret")
        elif keep_others and not (isinstance(doc, dict) and "apiVersion" in doc):
            converted = doc
        else:
            found.add("$.kind", f"{kind[0]} {kind[1]} cannot be imported (Deployment apps/v1, EdgeApplication "
                                "apps.kubeedge.io/v1alpha1, ConfigMap v1 and Secret v1 can)")
        problems += [f"{source.prefix()}: {line}" for line in found.lines]
        if not found.lines:
            out.append((source, converted))
    if problems:
        raise ResourceError(problems)
    return out


def _kind(doc: Any) -> tuple[str, str]:
    if not isinstance(doc, dict):
        return ("?", "?")
    return (str(doc.get("apiVersion", "?"))[:100], str(doc.get("kind", "?"))[:100])


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    metadata: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    return (str(metadata.get("namespace") or "default"), str(metadata.get("name", "")))


def _map(found: _Problems, path: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    """`value` as a mapping; every key not in `allowed` is a problem at its path."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        found.add(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    for key in value:
        if key not in allowed:
            found.add(f"{path}.{key}", "has no fieldgate equivalent")
    return value


def _list(found: _Problems, path: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        found.add(path, f"expected a list, got {type(value).__name__}")
        return []
    return value


def _header(found: _Problems, doc: dict[str, Any], kind: str) -> dict[str, Any]:
    metadata = _map(found, "$.metadata", doc.get("metadata"),
                    {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
                     "creationTimestamp"})
    out: dict[str, Any] = {"kind": kind, "name": metadata.get("name")}
    if metadata.get("namespace") not in (None, "default"):
        out["namespace"] = metadata["namespace"]
    for field in ("labels", "annotations"):
        if metadata.get(field):
            out[field] = dict(_map(found, f"$.metadata.{field}", metadata[field], set(metadata[field])))
    return out


def _values(found: _Problems, doc: dict[str, Any], kind: str) -> dict[str, Any]:
    _map(found, "$", doc, {"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"})
    out = _header(found, doc, kind)
    data: dict[str, Any] = {}
    for key, value in _map(found, "$.data", doc.get("data"), set(doc.get("data") or {})).items():
        if kind == "Secret":  # Secret data are base64
            try:
                data[key] = base64.b64decode(str(value), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                found.add(f"$.data.{key}", "not base64 of UTF-8 text")
        else:
            data[key] = value
    if kind == "Secret":
        data.update(_map(found, "$.stringData", doc.get("stringData"), set(doc.get("stringData") or {})))
    elif doc.get("stringData") is not None:
        found.add("$.stringData", "has no fieldgate equivalent")
    out["data"] = data
    return out


# --- Deployment --------------------------------------------------------------------------------------------------


def _deployment(found: _Problems, base: str, doc: Any, runtime: str, config_maps: dict[tuple[str, str], Any],
                secrets: dict[tuple[str, str], Any]) -> dict[str, Any]:
    _map(found, base, doc, {"apiVersion", "kind", "metadata", "spec", "status"})
    sub = _Problems()
    out = _header(sub, doc, "Workload")
    found.lines += [base + line[1:] for line in sub.lines]
    out["runtime"] = runtime
    spec = _map(found, f"{base}.spec", doc.get("spec"), {"replicas", "selector", "strategy", "template",
                                                         "revisionHistoryLimit", "progressDeadlineSeconds"})
    if "replicas" in spec:
        out["replicas"] = spec["replicas"]
    strategy = _map(found, f"{base}.spec.strategy", spec.get("strategy"), {"type", "rollingUpdate"})
    converted: dict[str, Any] = {"type": strategy.get("type", "RollingUpdate")}
    if converted["type"] == "RollingUpdate":  # Kubernetes' defaults, written out: fieldgate's differ
        rolling = _map(found, f"{base}.spec.strategy.rollingUpdate", strategy.get("rollingUpdate"),
                       {"maxSurge", "maxUnavailable"})
        converted["max_surge"] = rolling.get("maxSurge", "25%")
        converted["max_unavailable"] = rolling.get("maxUnavailable", "25%")
    elif "rollingUpdate" in strategy:
        found.add(f"{base}.spec.strategy.rollingUpdate", "is for type RollingUpdate")
    out["strategy"] = converted
    template = _map(found, f"{base}.spec.template", spec.get("template"), {"metadata", "spec"})
    pod_meta = _map(found, f"{base}.spec.template.metadata", template.get("metadata"), {"labels", "annotations"})
    for field in ("labels", "annotations"):
        for key, value in (pod_meta.get(field) or {}).items():
            out.setdefault(field, {}).setdefault(key, value)
    selector = _map(found, f"{base}.spec.selector", spec.get("selector"), {"matchLabels"})
    for key, value in (selector.get("matchLabels") or {}).items():
        if (pod_meta.get("labels") or {}).get(key) != value:
            found.add(f"{base}.spec.selector.matchLabels.{key}", "does not match the template's labels")
    pod_path = f"{base}.spec.template.spec"
    pod = _map(found, pod_path, template.get("spec"), {
        "containers", "initContainers", "volumes", "nodeSelector", "nodeName", "restartPolicy",
        "terminationGracePeriodSeconds", "hostNetwork", "securityContext"})
    containers = _list(found, f"{pod_path}.containers", pod.get("containers"))
    init_containers = _list(found, f"{pod_path}.initContainers", pod.get("initContainers"))
    if not containers:
        found.add(f"{pod_path}.containers", "one container is needed")
    if runtime == "process" and (len(containers) > 1 or init_containers):
        where = f"{pod_path}.containers[1]" if len(containers) > 1 else f"{pod_path}.initContainers"
        found.add(where, "the process runtime runs one command: several containers and init containers need the "
                         "container runtime")
    if pod.get("nodeSelector"):
        out["node_selector"] = pod["nodeSelector"]
    if pod.get("nodeName"):
        out["node"] = pod["nodeName"]
    restart = pod.get("restartPolicy", "Always")
    if restart in ("OnFailure", "Never"):
        out["restart"] = {"Always": "always", "OnFailure": "on-failure", "Never": "never"}[restart]
    elif restart != "Always":
        found.add(f"{pod_path}.restartPolicy", f"expected Always, OnFailure or Never, got {restart!r}")
    if "terminationGracePeriodSeconds" in pod:
        out["stop_grace"] = pod["terminationGracePeriodSeconds"]
    if pod.get("hostNetwork"):
        out["network"] = "host"
    security = _security(found, f"{pod_path}.securityContext", pod.get("securityContext"), pod_level=True)
    volumes = {}
    for index, volume in enumerate(_list(found, f"{pod_path}.volumes", pod.get("volumes"))):
        path = f"{pod_path}.volumes[{index}]"
        volume = _map(found, path, volume, {"name", "hostPath", "emptyDir", "persistentVolumeClaim"})
        mapped = _volume(found, path, volume)
        if mapped is not None:
            volumes[str(volume.get("name"))] = (path, mapped)
    if containers and (len(containers) > 1 or init_containers) and runtime != "process":
        _pod(found, pod_path, containers, init_containers, out, volumes, security, config_maps, secrets)
    elif containers:
        _container(found, f"{pod_path}.containers[0]", containers[0], out, volumes, security, config_maps, secrets)
    return out


def _pod(found: _Problems, pod_path: str, containers: list[Any], init_containers: list[Any], out: dict[str, Any],
         volumes: dict[str, tuple[str, dict[str, Any]]], pod_security: dict[str, Any],
         config_maps: dict[tuple[str, str], Any], secrets: dict[tuple[str, str], Any]) -> None:
    """Several containers, or init containers: a Workload's `containers` and `init_containers`, one pod. What a
    Workload has once (env_from, image_pull_policy, lifecycle hooks, accelerators, requests) is gathered from
    them."""
    workload_volumes: dict[str, dict[str, Any]] = {}
    env_from: dict[str, tuple[str, dict[str, Any]]] = {}
    requests: list[str] = []
    app_requests: dict[str, Any] = {}
    init_requests: dict[str, Any] = {}
    for field, k8s, group in (("init_containers", "initContainers", init_containers),
                              ("containers", "containers", containers)):
        converted_group = []
        for index, raw in enumerate(group):
            path = f"{pod_path}.{k8s}[{index}]"
            one: dict[str, Any] = {"runtime": out["runtime"], "namespace": out.get("namespace", "default")}
            _container(found, path, raw, one, volumes, pod_security, config_maps, secrets)
            container: dict[str, Any] = {"name": raw.get("name") if isinstance(raw, dict) else None}
            for key in ("image", "command", "args", "working_dir", "env", "ports", "health", "limits", "security"):
                if key in one:
                    container[key] = one[key]
            policy = one.get("image_pull_policy")
            if policy is not None and out.setdefault("image_pull_policy", policy) != policy:
                found.add(f"{path}.imagePullPolicy", "differs from another container's; a Workload has one "
                                                         "image_pull_policy")
            for item in one.get("env_from", []):
                first = env_from.setdefault(item["name"], (path, item))
                if first[1] != item:
                    found.add(f"{path}.env", f"{item['name']} comes from elsewhere in {first[0]}; a Workload's "
                                             "env_from is the same for all its containers")
            if "lifecycle" in one:
                if field == "containers" and index == 0:
                    out["lifecycle"] = one["lifecycle"]
                else:
                    found.add(f"{path}.lifecycle", "fieldgate runs lifecycle hooks in the first app container only")
            for name, count in one.get("accelerators", {}).items():
                out.setdefault("accelerators", {})[name] = out.get("accelerators", {}).get(name, 0) + count
            if REQUESTS_ANNOTATION in one.get("annotations", {}):
                requests.append(f"{container['name']}: {one['annotations'][REQUESTS_ANNOTATION]}")
            for key, amount in one.get("requests", {}).items():
                amount = _bytes(amount) if key == "memory" else amount
                if amount is None:
                    continue
                if field == "containers":  # the app containers run together: their requests add up
                    app_requests[key] = app_requests.get(key, 0) + amount
                else:  # an init container runs alone, before them
                    init_requests[key] = max(init_requests.get(key, 0), amount)
            mounts = []
            for volume in one.get("volumes", []):
                mount = {"name": volume["name"], "mount_path": volume["mount_path"]}
                if volume.get("read_only"):
                    mount["read_only"] = True
                mounts.append(mount)
                workload_volumes.setdefault(volume["name"], {key: value for key, value in volume.items()
                                                             if key not in ("mount_path", "read_only")})
            if mounts:
                container["volume_mounts"] = mounts
            converted_group.append(container)
        if converted_group:
            out[field] = converted_group
    if env_from:
        out["env_from"] = [item for _, item in env_from.values()]
    if workload_volumes:
        out["volumes"] = list(workload_volumes.values())
    if requests:
        out.setdefault("annotations", {})[REQUESTS_ANNOTATION] = "; ".join(requests)
    # as Kubernetes reckons a pod's request: its app containers' together, or its largest init container's
    pod_requests = {key: max(app_requests.get(key, 0), init_requests.get(key, 0))
                    for key in (*app_requests, *init_requests)}
    if pod_requests:
        out["requests"] = {key: pod_requests[key] for key in ("cpu", "memory") if key in pod_requests}


def _volume(found: _Problems, path: str, volume: dict[str, Any]) -> dict[str, Any] | None:
    if "hostPath" in volume:
        host = _map(found, f"{path}.hostPath", volume["hostPath"], {"path", "type"})
        return {"host_path": host.get("path")}
    if "emptyDir" in volume:
        empty = _map(found, f"{path}.emptyDir", volume["emptyDir"], {"medium"})
        if empty.get("medium") not in (None, ""):
            found.add(f"{path}.emptyDir.medium", "has no fieldgate equivalent (scratch space is on disk)")
        return {"scratch": True}
    if "persistentVolumeClaim" in volume:
        claim = _map(found, f"{path}.persistentVolumeClaim", volume["persistentVolumeClaim"],
                     {"claimName", "readOnly"})
        return {"persistent": True, "claim": claim.get("claimName"), "read_only": bool(claim.get("readOnly"))}
    found.add(path, "give hostPath, emptyDir or persistentVolumeClaim (the volume kinds fieldgate has)")
    return None


def _security(found: _Problems, path: str, raw: Any, pod_level: bool = False) -> dict[str, Any]:
    allowed = {"runAsUser", "runAsGroup"} | (set() if pod_level else {
        "privileged", "capabilities", "readOnlyRootFilesystem"})
    context = _map(found, path, raw, allowed)
    out: dict[str, Any] = {}
    for k8s, ours in (("runAsUser", "run_as_user"), ("runAsGroup", "run_as_group"), ("privileged", "privileged"),
                      ("readOnlyRootFilesystem", "read_only_root_filesystem")):
        if k8s in context:
            out[ours] = context[k8s]
    if "capabilities" in context:
        out["capabilities"] = dict(_map(found, f"{path}.capabilities", context["capabilities"], {"add", "drop"}))
    return out


def _container(found: _Problems, path: str, raw: Any, out: dict[str, Any],
               volumes: dict[str, tuple[str, dict[str, Any]]], pod_security: dict[str, Any],
               config_maps: dict[tuple[str, str], Any], secrets: dict[tuple[str, str], Any]) -> None:
    container = _map(found, path, raw, {
        "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "livenessProbe",
        "readinessProbe", "resources", "volumeMounts", "workingDir", "securityContext", "lifecycle"})
    namespace = out.get("namespace", "default")
    if container.get("image") is not None and out["runtime"] == "process":  # runs `command` on the node
        out.setdefault("annotations", {})[IMAGE_ANNOTATION] = str(container["image"])
    elif container.get("image") is not None:
        out["image"] = container["image"]
    if "imagePullPolicy" in container and out["runtime"] != "process":
        out["image_pull_policy"] = container["imagePullPolicy"]
    if "command" in container:
        out["command"] = container["command"]
    if "args" in container:
        out["args"] = container["args"]
    if "workingDir" in container:
        out["working_dir"] = container["workingDir"]
    env: dict[str, Any] = {}
    env_from: list[dict[str, Any]] = []
    for index, item in enumerate(_list(found, f"{path}.env", container.get("env"))):
        item_path = f"{path}.env[{index}]"
        item = _map(found, item_path, item, {"name", "value", "valueFrom"})
        if "valueFrom" in item:
            source = _map(found, f"{item_path}.valueFrom", item["valueFrom"], {"configMapKeyRef", "secretKeyRef"})
            for k8s, ours in (("configMapKeyRef", "config_item"), ("secretKeyRef", "secret")):
                if k8s in source:
                    ref = _map(found, f"{item_path}.valueFrom.{k8s}", source[k8s], {"name", "key"})
                    env_from.append({"name": item.get("name"), ours: ref.get("name"), "key": ref.get("key")})
        else:
            env[str(item.get("name"))] = str(item.get("value", ""))
    for index, item in enumerate(_list(found, f"{path}.envFrom", container.get("envFrom"))):
        item_path = f"{path}.envFrom[{index}]"
        item = _map(found, item_path, item, {"configMapRef", "secretRef", "prefix"})
        for k8s, ours, held in (("configMapRef", "config_item", config_maps), ("secretRef", "secret", secrets)):
            if k8s not in item:
                continue
            ref = _map(found, f"{item_path}.{k8s}", item[k8s], {"name"})
            source_doc = held.get((namespace, str(ref.get("name"))))
            if source_doc is None:
                found.add(f"{item_path}.{k8s}.name", f"{ref.get('name')!r}: give its {k8s[:-3]} document in the "
                                                     "same import (its keys become env_from entries)")
                continue
            keys = set(source_doc.get("data") or {}) | set(source_doc.get("stringData") or {})
            env_from += [{"name": f"{item.get('prefix', '')}{key}", ours: ref.get("name"), "key": key}
                         for key in sorted(keys)]
    if env:
        out["env"] = env
    if env_from:
        out["env_from"] = env_from
    ports = []
    for index, port in enumerate(_list(found, f"{path}.ports", container.get("ports"))):
        port_path = f"{path}.ports[{index}]"
        port = _map(found, port_path, port, {"name", "containerPort", "hostPort", "protocol"})
        name = str(port.get("name") or ("http" if index == 0 else f"port-{port.get('containerPort')}"))
        if not _PORT_NAME.match(name):
            found.add(f"{port_path}.name", f"{name!r}: expected lowercase letters, digits and '-'")
        protocol = str(port.get("protocol", "TCP"))
        if protocol not in ("TCP", "UDP"):
            found.add(f"{port_path}.protocol", f"{protocol!r}: fieldgate maps TCP and UDP")
        mapped = {"name": name, "container_port": port.get("containerPort"), "protocol": protocol.lower()}
        if "hostPort" in port:
            mapped["host_port"] = port["hostPort"]
        ports.append(mapped)
    if ports:
        out["ports"] = ports
    readiness = _probe(found, f"{path}.readinessProbe", container.get("readinessProbe"), ports)
    liveness = _probe(found, f"{path}.livenessProbe", container.get("livenessProbe"), ports)
    if readiness and liveness and readiness != liveness:
        found.add(f"{path}.livenessProbe", "differs from readinessProbe; fieldgate has one health check, which "
                                           "gates ready and restarts the app (give one probe, or two alike)")
    if readiness or liveness:
        out["health"] = readiness or liveness
    _resources(found, f"{path}.resources", container.get("resources"), out)
    mounts = []
    for index, mount in enumerate(_list(found, f"{path}.volumeMounts", container.get("volumeMounts"))):
        mount_path = f"{path}.volumeMounts[{index}]"
        mount = _map(found, mount_path, mount, {"name", "mountPath", "readOnly"})
        if str(mount.get("name")) not in volumes:
            found.add(f"{mount_path}.name", f"{mount.get('name')!r} is not a volume of the pod (or not one that "
                                            "maps)")
            continue
        _, volume = volumes[str(mount.get("name"))]
        converted = {"name": volume.get("claim") or mount.get("name"), "mount_path": mount.get("mountPath")}
        converted.update((key, value) for key, value in volume.items() if key != "claim")
        if mount.get("readOnly") or volume.get("read_only"):
            converted["read_only"] = True
        else:
            converted.pop("read_only", None)
        mounts.append(converted)
    if mounts:
        out["volumes"] = mounts
    security = dict(pod_security)
    security.update(_security(found, f"{path}.securityContext", container.get("securityContext")))
    if security:
        out["security"] = security
    lifecycle = _map(found, f"{path}.lifecycle", container.get("lifecycle"), {"postStart", "preStop"})
    hooks = {}
    for k8s, ours in (("postStart", "post_start"), ("preStop", "pre_stop")):
        if k8s in lifecycle:
            hook = _map(found, f"{path}.lifecycle.{k8s}", lifecycle[k8s], {"exec", "httpGet"})
            if "exec" in hook:
                command = _map(found, f"{path}.lifecycle.{k8s}.exec", hook["exec"], {"command"})
                hooks[ours] = {"type": "exec", "command": command.get("command", [])}
            elif "httpGet" in hook:
                http = _map(found, f"{path}.lifecycle.{k8s}.httpGet", hook["httpGet"], {"path", "port"})
                hooks[ours] = {"type": "http", "path": http.get("path", "/"), "port": http.get("port")}
    if hooks:
        out["lifecycle"] = hooks


def _probe(found: _Problems, path: str, raw: Any, ports: list[dict[str, Any]]) -> dict[str, Any] | None:
    if raw is None:
        return None
    probe = _map(found, path, raw, {"httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds",
                                    "timeoutSeconds", "failureThreshold", "successThreshold"})
    out: dict[str, Any] = {}
    if "httpGet" in probe:
        http = _map(found, f"{path}.httpGet", probe["httpGet"], {"path", "port", "scheme"})
        if http.get("scheme", "HTTP") != "HTTP":
            found.add(f"{path}.httpGet.scheme", "fieldgate's http check speaks HTTP only")
        out = {"type": "http", "path": http.get("path", "/"), "port": _port(http.get("port"), ports)}
    elif "tcpSocket" in probe:
        tcp = _map(found, f"{path}.tcpSocket", probe["tcpSocket"], {"port"})
        out = {"type": "tcp", "port": _port(tcp.get("port"), ports)}
    elif "exec" in probe:
        command = _map(found, f"{path}.exec", probe["exec"], {"command"})
        out = {"type": "exec", "command": command.get("command", [])}
    else:
        found.add(path, "give httpGet, tcpSocket or exec")
    for k8s, ours in (("initialDelaySeconds", "initial_delay"), ("periodSeconds", "interval"),
                      ("timeoutSeconds", "timeout"), ("failureThreshold", "failure_threshold")):
        if k8s in probe:
            out[ours] = probe[k8s]
    if probe.get("successThreshold", 1) != 1:
        found.add(f"{path}.successThreshold", "fieldgate counts one success (give 1)")
    return out


def _port(port: Any, ports: list[dict[str, Any]]) -> Any:
    """A probe's container port as the name of the mapped port (the app's port differs per instance)."""
    for mapped in ports:
        if port in (mapped["name"], mapped["container_port"]):
            return mapped["name"]
    return port


def _resources(found: _Problems, path: str, raw: Any, out: dict[str, Any]) -> None:
    resources = _map(found, path, raw, {"limits", "requests"})
    limits = _map(found, f"{path}.limits", resources.get("limits"), set(resources.get("limits") or {}))
    converted: dict[str, Any] = {}
    for key, value in limits.items():
        if key == "cpu":
            cores = _cores(value)
            if cores is None:
                found.add(f"{path}.limits.cpu", f"{value!r}: expected cores like 0.5 or 500m")
            converted["cpu"] = cores
        elif key == "memory":
            size = _memory(value)
            if size is None:
                found.add(f"{path}.limits.memory", f"{value!r}: expected a size like 64Mi, 1Gi or 500M")
            converted["memory"] = size
        elif _ACCELERATOR.match(str(key)):
            out.setdefault("accelerators", {})[key] = value
        else:
            found.add(f"{path}.limits.{key}", "has no fieldgate equivalent")
    if converted:
        out["limits"] = converted
    requests = _map(found, f"{path}.requests", resources.get("requests"), set(resources.get("requests") or {}))
    wanted: dict[str, Any] = {}
    others = {}
    for key, value in requests.items():
        if key == "cpu":
            cores = _cores(value)
            if cores is None:
                found.add(f"{path}.requests.cpu", f"{value!r}: expected cores like 0.5 or 500m")
            wanted["cpu"] = cores
        elif key == "memory":
            size = _memory(value)
            if size is None:
                found.add(f"{path}.requests.memory", f"{value!r}: expected a size like 64Mi, 1Gi or 500M")
            wanted["memory"] = size
        elif _ACCELERATOR.match(str(key)):
            out.setdefault("accelerators", {}).setdefault(key, value)
        else:
            others[key] = value
    if wanted:
        out["requests"] = wanted
    if others:  # what the registry does not place by is kept for people to read
        out.setdefault("annotations", {})[REQUESTS_ANNOTATION] = ", ".join(
            f"{key}={value}" for key, value in others.items())


def _cores(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _CPU.match(str(value))
    if match is None:
        return None
    return float(match[1]) / (1000 if match[2] else 1)


_MEMORY_FACTORS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 1000, "M": 10**6, "G": 10**9}


def _bytes(value: Any) -> int | None:
    """Bytes of what `_memory` gave (a number of bytes, or a size such as 64Mi), to add requests up."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _MEMORY.match(str(value))
    return None if match is None else int(match[1]) * _MEMORY_FACTORS[_MEMORY_UNITS[match[2] or ""]]


def _memory(value: Any) -> int | str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _MEMORY.match(str(value))
    return None if match is None else f"{match[1]}{_MEMORY_UNITS[match[2] or '']}"


# --- EdgeApplication ---------------------------------------------------------------------------------------------


def _edge_application(found: _Problems, doc: dict[str, Any], runtime: str,
                      config_maps: dict[tuple[str, str], Any], secrets: dict[tuple[str, str], Any]
                      ) -> dict[str, Any]:
    _map(found, "$", doc, {"apiVersion", "kind", "metadata", "spec", "status"})
    out = _header(found, doc, "BatchWorkload")
    spec = _map(found, "$.spec", doc.get("spec"), {"workloadTemplate", "workloadScope"})
    template = _map(found, "$.spec.workloadTemplate", spec.get("workloadTemplate"), {"manifests"})
    manifests = _list(found, "$.spec.workloadTemplate.manifests", template.get("manifests"))
    deployments = [i for i, m in enumerate(manifests) if _kind(m) == DEPLOYMENT]
    for index, manifest in enumerate(manifests):
        if index != (deployments or [-1])[0]:
            kind = _kind(manifest)
            found.add(f"$.spec.workloadTemplate.manifests[{index}]",
                      f"{kind[0]} {kind[1]}: a BatchWorkload deploys one Deployment (give other documents apart)")
    if not deployments:
        found.add("$.spec.workloadTemplate.manifests", "one apps/v1 Deployment is needed")
        return out
    base = f"$.spec.workloadTemplate.manifests[{deployments[0]}]"
    workload = _deployment(found, base, manifests[deployments[0]], runtime, config_maps, secrets)
    for field, k8s in (("node_selector", ".spec.template.spec.nodeSelector"),
                       ("node", ".spec.template.spec.nodeName")):
        if field in workload:
            found.add(base + k8s, "an EdgeApplication places by workloadScope.targetNodeGroups")
    for field in ("kind", "name", "namespace", "node", "node_selector"):  # labels, annotations: each node's Workload
        workload.pop(field, None)
    out["template"] = workload
    scope = _map(found, "$.spec.workloadScope", spec.get("workloadScope"), {"targetNodeGroups"})
    groups = []
    for index, group in enumerate(_list(found, "$.spec.workloadScope.targetNodeGroups",
                                        scope.get("targetNodeGroups"))):
        groups.append(_group(found, f"$.spec.workloadScope.targetNodeGroups[{index}]", group, workload))
    if not groups:
        found.add("$.spec.workloadScope.targetNodeGroups", "at least one node group is needed")
    out["groups"] = groups
    return out


def _group(found: _Problems, path: str, raw: Any, workload: dict[str, Any]) -> dict[str, Any]:
    group = _map(found, path, raw, {"name", "overriders"})
    out: dict[str, Any] = {"group": group.get("name")}
    overriders = _map(found, f"{path}.overriders", group.get("overriders"), {
        "replicas", "imageOverriders", "envOverriders", "commandOverriders", "argsOverriders"})
    if "replicas" in overriders:
        out["replicas"] = overriders["replicas"]
    if "containers" in workload:
        for name in ("imageOverriders", "commandOverriders", "argsOverriders"):
            if overriders.get(name):
                found.add(f"{path}.overriders.{name}", "a Deployment of several containers is not overridden per "
                                                       "container (give the group a Deployment of its own)")
                overriders = {k: v for k, v in overriders.items() if k != name}
    image = str(workload.get("image") or "")
    for index, item in enumerate(_list(found, f"{path}.overriders.imageOverriders",
                                       overriders.get("imageOverriders"))):
        item_path = f"{path}.overriders.imageOverriders[{index}]"
        item = _map(found, item_path, item, {"component", "operator", "value", "predicate"})
        if item.get("operator", "replace") != "replace" or "predicate" in item:
            found.add(f"{item_path}.operator", "fieldgate replaces image parts only (operator replace)")
        component, value = item.get("component"), str(item.get("value", ""))
        if component == "Tag":
            out["image_tag"] = value
        elif component in ("Registry", "Repository"):
            image = _replace_image(image, str(component), value)
            out["image"] = image
        else:
            found.add(f"{item_path}.component", f"{component!r}: expected Registry, Repository or Tag")
    for name, field in (("commandOverriders", "command"), ("argsOverriders", "args")):
        values = list(workload.get(field) or [])
        for index, item in enumerate(_list(found, f"{path}.overriders.{name}", overriders.get(name))):
            item_path = f"{path}.overriders.{name}[{index}]"
            item = _map(found, item_path, item, {"containerName", "operator", "value"})
            given = [str(v) for v in _list(found, f"{item_path}.value", item.get("value"))]
            if item.get("operator") == "add":
                values += given
            elif item.get("operator") == "remove":
                values = [v for v in values if v not in given]
            else:
                found.add(f"{item_path}.operator", "expected add or remove")
            out[field] = values
    for index, item in enumerate(_list(found, f"{path}.overriders.envOverriders", overriders.get("envOverriders"))):
        item_path = f"{path}.overriders.envOverriders[{index}]"
        item = _map(found, item_path, item, {"containerName", "operator", "value"})
        if item.get("operator") not in ("add", "replace"):
            found.add(f"{item_path}.operator", "fieldgate sets variables over the template's (add or replace)")
        for env_index, env in enumerate(_list(found, f"{item_path}.value", item.get("value"))):
            env = _map(found, f"{item_path}.value[{env_index}]", env, {"name", "value"})
            out.setdefault("env", {})[str(env.get("name"))] = str(env.get("value", ""))
    return out


def _replace_image(image: str, component: str, value: str) -> str:
    """`registry/repository:tag` with the registry or the repository replaced."""
    rest, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    first, _, after = rest.partition("/")
    registry, repository = (first, after) if after and ("." in first or ":" in first) else ("", rest)
    if component == "Registry":
        registry = value
    else:
        repository = value
    return (f"{registry}/" if registry else "") + repository + (f":{tag}" if tag else "")

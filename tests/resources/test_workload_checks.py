"""Workload, ConfigItem and Secret documents through the loader: the same one-line error format."""

from __future__ import annotations

import pytest

from gateway.errors import ResourceError
from gateway.resources.loader import check_documents, parse_yaml

GOOD = """\
kind: ConfigItem
name: settings
data: {mode: fast}
---
kind: Workload
name: app
command: [/usr/bin/env]
limits: {memory: 128Mi, cpu: 0.5}
ports: [{name: api, host_port: 18080}]
health: {type: tcp, port: api}
env_from: [{name: MODE, config_item: settings, key: mode}]
node_selector: {site: north}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ResourceError) as info:
        check_documents(parse_yaml(text, "apps.yaml"), {})
    return info.value.problems


def test_a_good_workload_loads() -> None:
    config = check_documents(parse_yaml(GOOD, "apps.yaml"), {})
    workload = config.workloads[("default", "app")]
    assert workload.limits.memory == 128 << 20 and workload.limits.cpu == 0.5
    # a fixed host port takes a rolling update that does not surge, or Recreate
    for strategy in ("{type: RollingUpdate, max_surge: 0, max_unavailable: 1}", "{type: Recreate}"):
        check_documents(parse_yaml(GOOD + f"strategy: {strategy}\nrequests: {{cpu: 0.5, memory: 64Mi}}\n",
                                   "apps.yaml"), {})
    assert config.config_items[("default", "settings")].data == {"mode": "fast"}


@pytest.mark.parametrize(("change", "expected"), [
    ("replicas: -1", "apps.yaml: document 2 (Workload app): $.replicas: Expected int >= 0, got -1"),
    ("limits: {memory: 12 parsecs}", "apps.yaml: document 2 (Workload app): $.limits.memory: Expected a size like "
                                     "'64Mi', '1Gi', '500M' or a number of bytes, got '12 parsecs'"),
    ("restart: sometimes", "apps.yaml: document 2 (Workload app): $.restart: Invalid enum value 'sometimes'"),
    ("health: {type: http, port: web}", "apps.yaml: document 2 (Workload app): $.health.port: no port named 'web' "
                                        "(ports: api)"),
    ("health: {type: exec}", "apps.yaml: document 2 (Workload app): $.health.command: an exec check needs a command"),
    ("env_from: [{name: MODE, config_item: settings, key: speed}]",
     "apps.yaml: document 2 (Workload app): $.env_from[0].key: ConfigItem default/settings has no key 'speed' "
     "(keys: mode)"),
    ("env_from: [{name: MODE, secret: settings, config_item: settings, key: mode}]",
     "apps.yaml: document 2 (Workload app): $.env_from[0]: give either config_item or secret"),
    ("files: [{path: ../etc/passwd, config_item: settings, key: mode}]",
     "apps.yaml: document 2 (Workload app): $.files[0].path: '../etc/passwd' must be relative, without '..'"),
    ("image: app:1", "apps.yaml: document 2 (Workload app): $.image: the process runtime runs a command, not an image"),
    ("oops: 1", "apps.yaml: document 2 (Workload app): $: Object contains unknown field oops"),
    ("requests: {cpu: 1}", "apps.yaml: document 2 (Workload app): $.requests.cpu: 1 cores is more than limits.cpu "
                           "(0.5)"),
    ("requests: {memory: 1Gi}", "apps.yaml: document 2 (Workload app): $.requests.memory: 1073741824 bytes is more "
                                "than limits.memory (134217728 bytes)"),
    ("requests: {memory: -1}", "apps.yaml: document 2 (Workload app): $.requests.memory: Expected a size like "
                               "'64Mi', '1Gi', '500M' or a number of bytes, got -1"),
    ("replicas: 2", "apps.yaml: document 2 (Workload app): $.ports[0].host_port: 18080 is a fixed port and replicas "
                    "is 2: every instance would claim it (use host_port 0 for a free port per instance, or replicas "
                    "1)"),
    ("strategy: {type: RollingUpdate}", "apps.yaml: document 2 (Workload app): $.ports[0].host_port: 18080 is a fixed "
                                        "port and strategy.max_surge lets an update start a second instance (1) "
                                        "beside the old one: both would claim it (set strategy.max_surge: 0 with "
                                        "max_unavailable: 1, strategy.type: Recreate, or host_port 0)"),
])
def test_bad_workloads_are_named_with_file_document_and_field(change: str, expected: str) -> None:
    key = change.split(":")[0]
    lines = [line for line in GOOD.splitlines() if not line.startswith(key + ":")]
    assert expected in problems("\n".join(lines) + "\n" + change + "\n")


def test_a_secret_needs_string_values() -> None:
    assert problems("kind: Secret\nname: s\ndata: {k: [1]}\n") == [
        "apps.yaml: document 1 (Secret s): $.data[...]: Expected str, got array"]


POD = """\
kind: Workload
name: shop
runtime: container
volumes: [{name: shared, scratch: true}]
init_containers:
  - {name: setup, image: "localhost/tools:1", command: [/bin/sh, -c, "echo ok > /shared/x"],
     volume_mounts: [{name: shared, mount_path: /shared}]}
containers:
  - name: web
    image: localhost/web:1
    ports: [{name: http, container_port: 8080}]
    health: {type: http, port: http}
    volume_mounts: [{name: shared, mount_path: /www, read_only: true}]
  - {name: sidecar, image: "localhost/agent:1", env: {TARGET: "http://127.0.0.1:8080"},
     security: {run_as_user: 1000, read_only_root_filesystem: true}, limits: {memory: 32Mi}}
"""


def test_a_pod_loads_and_publishes_the_ports_of_its_containers() -> None:
    config = check_documents(parse_yaml(POD, "apps.yaml"), {})
    workload = config.workloads[("default", "shop")]
    assert workload.is_pod and [c.name for c in workload.containers] == ["web", "sidecar"]
    assert [p.name for p in workload.all_ports] == ["http"]
    assert workload.containers[1].secured.run_as_user == 1000 and workload.privileged_at() is None
    single = check_documents(parse_yaml("kind: Workload\nname: one\nruntime: container\nimage: a:1\n", "a.yaml"),
                             {}).workloads[("default", "one")]
    assert not single.is_pod and single.containers == [] and single.init_containers == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("runtime: container", "runtime: process\ncommand: [/bin/true]",
     "$.containers: the process runtime runs one command; containers need the container runtime"),
    ("runtime: container", "runtime: container\nimage: localhost/web:1",
     "$.image: a workload with `containers` gives its image per container"),
    ("runtime: container", "runtime: container\nhealth: {type: tcp, port: 80}",
     "$.health: a workload with `containers` gives its health per container"),
    ("name: sidecar", "name: web", "$.containers[1].name: container 'web' is given twice"),
    ("name: setup", "name: web", "$.containers[0].name: container 'web' is given twice"),
    ("name: sidecar", "name: Side_Car", "$.containers[1].name: Expected str matching regex"),
    ("{name: shared, mount_path: /shared}", "{name: other, mount_path: /shared}",
     "$.init_containers[0].volume_mounts[0].name: no volume 'other' in $.volumes (volumes: shared)"),
    ("mount_path: /www,", "mount_path: /www/../etc,",
     "$.containers[0].volume_mounts[0].mount_path: '/www/../etc': an absolute path below /, without '..'"),
    ("health: {type: http, port: http}", "health: {type: http, port: admin}",
     "$.containers[0].health.port: no port named 'admin' (ports: http)"),
    ("health: {type: http, port: http}", "health: {type: exec}",
     "$.containers[0].health.command: an exec check needs a command"),
    ("command: [/bin/sh,", "ports: [{name: http}], command: [/bin/sh,",
     "$.init_containers[0].ports: an init container publishes no ports (it runs before the app)"),
    ("command: [/bin/sh,", "ports: [{name: admin}], command: [/bin/sh,",
     "$.init_containers[0].ports: an init container publishes no ports"),
    ("limits: {memory: 32Mi}", "limits: {memory: 1Ki}", "$.containers[1].limits.memory: must be at least 1Mi"),
    ("env: {TARGET:", "unknown: 1, env: {TARGET:", "$.containers[1]: Object contains unknown field unknown"),
])
def test_bad_pods_are_named_with_their_field_path(old: str, new: str, expected: str) -> None:
    assert old in POD
    found = problems(POD.replace(old, new, 1))
    assert any(expected in problem for problem in found), found


def test_pod_limits_on_counts_and_init_containers_without_app_containers() -> None:
    many = "".join(f"  - {{name: c{i}, image: 'a:1'}}\n" for i in range(17))
    text = POD[:POD.index("containers:\n  - name: web")] + "containers:\n" + many
    assert any("$.containers: Expected array of length <= 16" in p for p in problems(text))
    alone = POD[:POD.index("containers:\n  - name: web")]
    assert problems(alone) == [
        "apps.yaml: document 1 (Workload shop): $.containers: init_containers run before the app containers: give "
        "those in `containers`"]
    process = "kind: Workload\nname: p\ncommand: [/bin/true]\ninit_containers: [{name: i, image: 'a:1'}]\n"
    assert any("$.init_containers: the process runtime runs one command; containers need the container runtime"
               in p for p in problems(process))

"""Devices, accelerators, security settings, volumes, lifecycle hooks and annotations through the loader and
fieldgate check: each bad value is named by file, document and field, hostile ones included."""

from __future__ import annotations

import subprocess

import pytest

from gateway.errors import ResourceError
from gateway.resources.loader import check_documents, parse_yaml
from tests.conftest import FIELDGATE

GOOD = """\
kind: Gateway
name: edge
workloads: {host_path_prefixes: [/srv/data], accelerators: {nvidia.com/gpu: 2, huawei.com/Ascend310: 1}}
---
kind: Workload
name: app
annotations: {team.example.com/owner: line crew, note: "restart after 6pm"}
runtime: container
image: localhost/app:1
devices: [{path: /dev/ttyUSB0, permissions: rw}, {path: /dev/video0, container_path: /dev/video1}]
accelerators: {nvidia.com/gpu: 1}
security: {run_as_user: 1000, run_as_group: 1000, capabilities: {add: [NET_ADMIN], drop: [ALL]},
           read_only_root_filesystem: true}
volumes:
  - {name: state, persistent: true, mount_path: /data}
  - {name: tmp, scratch: true, mount_path: /tmp}
  - {name: in, host_path: /srv/data/in, mount_path: /in, read_only: true}
ports: [{name: http, container_port: 8080}]
lifecycle:
  post_start: {type: http, port: http, path: /warm, timeout: 2s}
  pre_stop: {type: exec, command: [/bin/sh, -c, "echo bye"]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ResourceError) as info:
        check_documents(parse_yaml(text, "apps.yaml"), {})
    return info.value.problems


def test_the_new_settings_load() -> None:
    config = check_documents(parse_yaml(GOOD, "apps.yaml"), {})
    workload = config.workloads[("default", "app")]
    assert workload.annotations == {"team.example.com/owner": "line crew", "note": "restart after 6pm"}
    assert workload.devices[0].permissions == "rw" and workload.devices[1].permissions == "rwm"
    assert workload.secured.run_as_user == 1000 and workload.hooks.pre_stop is not None
    assert config.gateway.workloads.accelerators == {"nvidia.com/gpu": 2, "huawei.com/Ascend310": 1}


WORKLOAD = "apps.yaml: document 2 (Workload app): "


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("path: /dev/ttyUSB0,", "path: /etc/passwd,", "$.devices[0].path: Expected str matching regex"),
    ("path: /dev/ttyUSB0,", "path: /dev/../etc/passwd,", "$.devices[0].path: '/dev/../etc/passwd' must not contain"),
    ("permissions: rw", "permissions: rwx", "$.devices[0].permissions: Expected str matching regex"),
    ("permissions: rw", "permissions: rr", "$.devices[0].permissions: Expected str matching regex"),
    ("{nvidia.com/gpu: 1}", "{gpu: 1}", "Expected str matching regex '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/"),
    ("{nvidia.com/gpu: 1}", "{nvidia.com/gpu: 0}", "$.accelerators[...]: Expected int >= 1"),
    ("{nvidia.com/gpu: 1}", "{nvidia.com/gpu: 100000}", "$.accelerators[...]: Expected int <= 1024"),
    ("run_as_user: 1000,", "run_as_user: -1,", "$.security.run_as_user: Expected int >= 0"),
    ("run_as_user: 1000,", "run_as_user: 99999999999,", "$.security.run_as_user: Expected int <= 4294967294"),
    ("add: [NET_ADMIN]", "add: [net_admin]", "$.security.capabilities.add[0]: Expected str matching regex"),
    ("{name: state, persistent: true, mount_path: /data}", "{name: state, persistent: true, scratch: true, "
     "mount_path: /data}", "$.volumes[0]: give exactly one of host_path, persistent: true or scratch: true (got "
     "persistent, scratch)"),
    ("{name: tmp, scratch: true, mount_path: /tmp}", "{name: state, scratch: true, mount_path: /tmp}",
     "$.volumes[1].name: volume 'state' is given twice"),
    ("mount_path: /tmp}", "mount_path: /data}", "$.volumes[1].mount_path: /data is mounted twice"),
    ("mount_path: /tmp}", "mount_path: tmp}", "$.volumes[1].mount_path: Expected str matching regex"),
    ("mount_path: /tmp}", "}", "$.volumes[1].mount_path: the container runtime mounts a volume at a mount_path"),
    ("host_path: /srv/data/in", "host_path: /etc",
     "$.volumes[2].host_path: /etc is not under a prefix this node allows (the Gateway's "
     "workloads.host_path_prefixes: /srv/data)"),
    ("host_path: /srv/data/in", "host_path: /srv/data/../../etc", "$.volumes[2].host_path: '/srv/data/../../etc' "
     "must not contain '..'"),
    ("host_path: /srv/data/in", "host_path: /srv/database", "$.volumes[2].host_path: /srv/database is not under"),
    ("port: http, path: /warm", "port: metrics, path: /warm", "$.lifecycle.post_start.port: no port named "
     "'metrics' (ports: http)"),
    ("timeout: 2s}", "timeout: 0s}", "$.lifecycle.post_start.timeout: must be above 0"),
    ("port: http, path: /warm", "port: " + "p" * 100_000 + ", path: /warm",
     "$.lifecycle.post_start.port: Expected str of length <= 63"),
    ("command: [/bin/sh, -c, \"echo bye\"]", "command: []", "$.lifecycle.pre_stop.command: an exec hook needs a "
     "command"),
    ("type: exec,", "type: tcp,", "$.lifecycle.pre_stop.type: Invalid enum value 'tcp'"),
    ("note: \"restart after 6pm\"", "\"bad key!\": x",
     "Expected str matching regex '^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?"),
    ("note: \"restart after 6pm\"", "note: \"" + "x" * 5000 + "\"", "$.annotations[...]: Expected str of "
     "length <= 4096"),
])
def test_bad_values_are_named(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1))
    assert any(p.startswith(WORKLOAD) and expected in p for p in found), found
    if "at key" in found[0]:  # a bad key: the map is named
        assert found[0].split(" - at key in ")[1].startswith(("$.accelerators", "$.annotations"))


def test_container_only_settings_are_refused_for_a_process() -> None:
    text = ("kind: Workload\nname: app\ncommand: [sleep, '1']\nsecurity: {privileged: true, run_as_user: 1000}\n"
            "devices: [{path: /dev/ttyS0, container_path: /dev/ttyS1}]\n")
    assert problems(text) == [
        "apps.yaml: document 1 (Workload app): $.security.privileged: applies to containers only (a process takes "
        "run_as_user and run_as_group)",
        "apps.yaml: document 1 (Workload app): $.devices[0].container_path: applies to containers only"]


def test_a_node_without_prefixes_allows_no_host_path() -> None:
    text = "kind: Workload\nname: app\ncommand: [sleep, '1']\nvolumes: [{name: x, host_path: /srv}]\n"
    assert problems(text) == ["apps.yaml: document 1 (Workload app): $.volumes[0].host_path: /srv is not under a "
                              "prefix this node allows (the Gateway's workloads.host_path_prefixes: none)"]


def test_hostile_gateway_settings_are_named() -> None:
    many = ", ".join(f"vendor.com/a{i}: 1" for i in range(65))
    text = f"kind: Gateway\nname: edge\nworkloads: {{accelerators: {{{many}}}}}\n"
    assert problems(text)[0].startswith("apps.yaml: document 1 (Gateway edge): $.workloads.accelerators: Expected "
                                        "object of length <= 64")
    text = "kind: Gateway\nname: edge\nworkloads: {host_path_prefixes: [relative/path]}\n"
    assert problems(text)[0].startswith("apps.yaml: document 1 (Gateway edge): $.workloads.host_path_prefixes[0]: "
                                        "Expected str matching regex")


def test_fieldgate_check_and_get(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "apps.yaml"  # type: ignore[operator]
    path.write_text(GOOD.replace("host_path: /srv/data/in", "host_path: /etc"))
    checked = subprocess.run([*FIELDGATE, "check", str(path)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert checked.returncode == 2
    assert f"{path}: document 2 (Workload app): $.volumes[2].host_path: /etc is not under a prefix" in checked.stderr
    path.write_text(GOOD)
    shown = subprocess.run([*FIELDGATE, "get", "Workload", "default/app", "-c", str(path)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "annotations:\n  team.example.com/owner: line crew\n  note: restart after 6pm\n" in shown.stdout
    missing = subprocess.run([*FIELDGATE, "get", "Workload", "nope", "-c", str(path)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "no Workload default/nope" in missing.stderr

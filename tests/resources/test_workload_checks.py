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

"""Node groups: by names or by a selector over the join-token labels, a node in at most one group."""

from __future__ import annotations

import json
from pathlib import Path

from tests.registry.conftest import Registry, join


def test_groups_by_names_and_selector_and_a_node_in_at_most_one(registry: Registry, tmp_path: Path) -> None:
    north = registry.token("--max-uses", "3", "--labels", "site=north")
    for name in ("a", "b"):
        assert join(registry, north, tmp_path / name, "--name", name).returncode == 0
    assert join(registry, registry.token("--labels", "site=south"), tmp_path / "c", "--name", "c").returncode == 0

    assert registry.cli("group", "create", "north", "--selector", "site=north").stdout.strip() == "group north: a, b"
    refused = registry.cli("group", "create", "extra", "--nodes", "c,a", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "fieldgate registry: node a is in group north already (a node is in at most one group)"]
    assert registry.cli("group", "create", "south", "--nodes", "c").returncode == 0
    assert registry.cli("group", "create", "Bad_Name", "--nodes", "c", check=False).returncode == 2
    assert registry.cli("group", "create", "ghosts", "--nodes", "zz", check=False).stderr.strip() == (
        "fieldgate registry: --nodes: no node zz")

    # a node that joins later with matching labels lands in the group
    assert join(registry, north, tmp_path / "d", "--name", "d").returncode == 0
    groups = {g["name"]: g for g in map(json.loads, registry.cli("group", "list", "--json").stdout.splitlines())}
    assert groups["north"] == {"name": "north", "selector": {"site": "north"}, "nodes": ["a", "b", "d"]}
    assert groups["south"]["nodes"] == ["c"]
    assert registry.nodes()["d"]["group"] == "north" and registry.nodes()["d"]["labels"] == {"site": "north"}

    # labels that two groups' selectors take are refused at join
    registry.cli("group", "create", "edge", "--selector", "role=edge")
    registry.cli("group", "create", "zone-1", "--selector", "zone=1")
    both = join(registry, registry.token("--labels", "role=edge,zone=1"), tmp_path / "e", "--name", "e")
    assert both.returncode == 2 and "match groups edge, zone-1" in both.stderr
    assert "e" not in registry.nodes()
    assert "north" in registry.cli("group", "list").stdout

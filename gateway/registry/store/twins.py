"""Device twins at the registry: the latest twin each node reports per device (`device_twins`) and the desired values
set at the registry, versioned per node (`device_desired`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.registry.store.db import NODES_CHANNEL, Statement, Tables


def device_filter(node: str | None, namespace: str | None, name: str | None) -> tuple[str, list[Any]]:
    """` WHERE node=? AND …` (empty without a filter) and its arguments."""
    where, args = [], []
    for column, value in (("node", node), ("namespace", namespace), ("name", name)):
        if value is not None:
            where.append(f"{column}=?")
            args.append(value)
    return (f" WHERE {' AND '.join(where)}" if where else ""), args


def desired_after_statement(node: str, version: int) -> Statement:
    """The query of TwinTables.desired_after, for Database.reads; desired_after_rows makes its rows."""
    return ("SELECT namespace, name, property, value, version FROM device_desired WHERE node=? AND version>? "
            "ORDER BY version, namespace, name, property", (node, version))


def desired_after_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, str, str, Any, int]]:
    return [(ns, name, prop, json.loads(value), int(number)) for ns, name, prop, value, number in rows]


class TwinTables(Tables):
    async def record(self, node: str, reports: Sequence[tuple[str, str, str, str, str]] | None, complete: bool,
                     delivered_up_to: int | None, refused: Sequence[tuple[str, str, str, int, str]],
                     now: float, descriptions: Sequence[tuple[str, str, str, str]] = ()) -> None:
        """In one transaction: the latest twin of each reported device (namespace, name, state, reason, properties
        as JSON), and with `complete` no other device of the node; the desired values up to `delivered_up_to`
        delivered, and the `refused` ones (namespace, name, property, version, error) with their error; the
        `descriptions` (namespace, name, model, units as JSON) of reported devices."""
        statements: list[Statement] = []
        if reports is not None:
            seen = set()
            for namespace, name, state, reason, properties in reports:
                seen.add((namespace, name))
                # a report without properties names a device and its state only (a node's whole set that does not
                # fit one heartbeat): the properties last reported stay
                kept = "properties=excluded.properties, " if properties != "{}" else ""
                statements.append((
                    "INSERT INTO device_twins (node, namespace, name, state, state_reason, properties, reported_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, namespace, name) DO "
                    f"UPDATE SET state=excluded.state, state_reason=excluded.state_reason, {kept}"
                    "reported_at=excluded.reported_at",
                    (node, namespace, name, state, reason, properties, now)))
            if complete:  # the node's whole set: forget the devices it no longer has
                for namespace, name in await self.database.rows(
                        "SELECT namespace, name FROM device_twins WHERE node=?", node):
                    if (namespace, name) not in seen:
                        statements.append(("DELETE FROM device_twins WHERE node=? AND namespace=? AND name=?",
                                           (node, namespace, name)))
        for namespace, name, model, units in descriptions:  # after the reports: a new device's row exists by now
            statements.append(("UPDATE device_twins SET model=?, units=? WHERE node=? AND namespace=? AND name=?",
                               (model, units, node, namespace, name)))
        if delivered_up_to is not None:
            statements.append(("UPDATE device_desired SET delivered_at=? WHERE node=? AND version<=? AND "
                               "delivered_at IS NULL", (now, node, delivered_up_to)))
        for namespace, name, prop, version, error in refused:
            statements.append(("UPDATE device_desired SET error=? WHERE node=? AND namespace=? AND name=? AND "
                               "property=? AND version=?", (error, node, namespace, name, prop, version)))
        if statements:
            await self.database.transaction(statements)

    async def desired_after(self, node: str, version: int) -> list[tuple[str, str, str, Any, int]]:
        """(namespace, name, property, value, version) of a node's desired values newer than `version`."""
        sql, args = desired_after_statement(node, version)
        return desired_after_rows(await self.database.rows(sql, *args))

    async def latest_versions(self) -> dict[str, int]:
        """The newest desired version of every node that has desired values."""
        return {str(node): int(version) for node, version in await self.database.rows(
            "SELECT node, MAX(version) FROM device_desired GROUP BY node")}

    async def reporting_nodes(self, namespace: str, name: str) -> list[str]:
        return [str(row[0]) for row in await self.database.rows(
            "SELECT node FROM device_twins WHERE namespace=? AND name=? ORDER BY node", namespace, name)]

    async def reported_properties(self, node: str, namespace: str, name: str) -> set[str] | None:
        """The properties a node reports of a device; None when it does not report the device."""
        rows = await self.database.rows(
            "SELECT properties FROM device_twins WHERE node=? AND namespace=? AND name=?", node, namespace, name)
        return set(json.loads(rows[0][0])) if rows else None

    async def set_desired(self, node: str, namespace: str, name: str, values: dict[str, Any], now: float) -> None:
        """Store desired values of a device under the node's next desired version (one version for all)."""
        await self.database.transaction([
            ("UPDATE nodes SET desired_version=desired_version+1 WHERE name=?", (node,)),
            *[("INSERT INTO device_desired VALUES (?, ?, ?, ?, ?, (SELECT desired_version FROM nodes WHERE name=?), "
               "?, NULL, NULL) ON CONFLICT (node, namespace, name, property) DO UPDATE SET value=excluded.value, "
               "version=excluded.version, set_at=excluded.set_at, delivered_at=NULL, error=NULL",
               (node, namespace, name, prop, json.dumps(value), node, now)) for prop, value in values.items()]])
        await self.database.notify(NODES_CHANNEL, node)  # the node's channel pushes them now

    async def reports(self, node: str | None = None, namespace: str | None = None,
                      name: str | None = None) -> list[tuple[str, str, str, str, str, dict[str, Any], float]]:
        """(node, namespace, name, state, reason, properties, reported at) of the reported twins."""
        clause, args = device_filter(node, namespace, name)
        return [(row_node, ns, row_name, state, reason, json.loads(properties), reported_at)
                for row_node, ns, row_name, state, reason, properties, reported_at in await self.database.rows(
                    "SELECT node, namespace, name, state, state_reason, properties, reported_at FROM device_twins"
                    f"{clause}", *args)]

    async def descriptions(self, node: str | None = None, namespace: str | None = None,
                           name: str | None = None) -> dict[tuple[str, str, str], tuple[str, dict[str, str]]]:
        """(model, units by property) of the reported devices by (node, namespace, name), as their nodes describe
        them."""
        clause, args = device_filter(node, namespace, name)
        return {(str(row_node), str(ns), str(row_name)): (str(model), dict(json.loads(units)))
                for row_node, ns, row_name, model, units in await self.database.rows(
                    f"SELECT node, namespace, name, model, units FROM device_twins{clause}", *args)}

    async def desired(self, node: str | None = None, namespace: str | None = None,
                      name: str | None = None) -> list[tuple[Any, ...]]:
        """(node, namespace, name, property, value, version, set at, delivered at, error) of the desired values."""
        clause, args = device_filter(node, namespace, name)
        return [(*row[:4], json.loads(row[4]), *row[5:]) for row in await self.database.rows(
            "SELECT node, namespace, name, property, value, version, set_at, delivered_at, error FROM device_desired"
            f"{clause}", *args)]

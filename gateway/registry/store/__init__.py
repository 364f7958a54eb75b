"""The registry's store, on SQLite in its data dir or on PostgreSQL shared by replicas (gateway.registry.store.db):
every SQL statement of the registry is in this package. RegistryStore holds the nodes, their join tokens and
certificates, groups and the messages queued for them; each other area's tables are a part of it with typed methods:
`documents` (and their versions), `twins`, `workloads` (placements, status, events), `upgrades`, `access` (folders,
workspaces, custom roles, API tokens, users, audit), `samples`, `batches`, `files` and `requests` (asked of a node,
answered at any replica). Statements that must commit together go through one `transaction`, or come back from a
part's method as statements for another one to run (`Statement`)."""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import msgspec

from gateway.errors import AuthError, ConfigError, NotFound, StoreError
from gateway.registry.store.access import AccessTables
from gateway.registry.store.batches import BatchTables
from gateway.registry.store.channels import ChannelTables
from gateway.registry.store.db import (
    NODES_CHANNEL,
    Database,
    KeyTaken,
    NothingMatched,
    Statement,
    nodes_payload,
    open_database,
)
from gateway.registry.store.documents import (
    Document,
    DocumentTables,
    node_devices_statement,
    of_kinds_rows,
    of_kinds_statement,
)
from gateway.registry.store.files import FileTables
from gateway.registry.store.requests import RequestTables
from gateway.registry.store.routes import RouteTables
from gateway.registry.store.samples import SampleTables, figures_statements, sample_statements
from gateway.registry.store.services import ServiceTables
from gateway.registry.store.twins import TwinTables, desired_after_rows, desired_after_statement
from gateway.registry.store.upgrades import UpgradeTables
from gateway.registry.store.workloads import WorkloadTables, placements_on_rows, placements_on_statement
from gateway.resources.schema import NAME_PATTERN
from gateway.wire import AppFigures

OFFLINE_AFTER = 3  # heartbeat intervals without a heartbeat
ROLES = ("viewer", "operator", "admin")


class TokenRefused(AuthError):
    """A join token that cannot be used; the message is the one-word reason."""


class NameTaken(ConfigError):
    """A joining node asked for the name of a node that exists."""


MESSAGES_AT_ONCE = 100  # messages a node is given at a time


def _certificate_statement(name: str, serial: str) -> Statement:
    """(revoked or None, the node's current serial or None) of a certificate: see _check_certificate_row."""
    return ("SELECT (SELECT 1 FROM revoked_certificates WHERE serial=?), (SELECT serial FROM nodes WHERE name=?)",
            (serial, name))


def _check_certificate_row(row: tuple[Any, ...], serial: str) -> None:
    revoked, current = row
    if revoked is not None:
        raise AuthError("certificate revoked")
    if current != serial:
        raise AuthError("unknown node certificate")


def _node_documents_statements(node: str) -> list[Statement]:
    """A node's Devices, the registry's Endpoints, Routes and Services, its workloads' placements."""
    return [node_devices_statement(node), of_kinds_statement(("Endpoint", "Route", "Service")),
            placements_on_statement(node)]


def _pending_messages_statement(node: str, now: float, limit: int = MESSAGES_AT_ONCE) -> Statement:
    return ("SELECT id, namespace, path, payload, created_at FROM messages WHERE node=? AND expires_at>=? "
            "ORDER BY created_at, id LIMIT ?", (node, now, limit))


def _pending_messages_rows(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"id": message_id, "namespace": ns, "path": path, "payload": payload, "created_at": created}
            for message_id, ns, path, payload, created in rows]


class Beat(NamedTuple):
    """What recording a heartbeat read: the node's interval, its newest desired version, and whether an upgrade
    task is unfinished."""

    interval: float
    newest_desired: int
    upgrading: bool


class RegistryStore:
    """`async with RegistryStore(data_dir, db_url) as store:` on SQLite in the data dir or on PostgreSQL."""

    def __init__(self, data_dir: Path, db_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self._database: Database | None = None
        # messages queued, delivered (acknowledged) and expired by this process, for GET /metrics
        self.message_counts: collections.Counter[str] = collections.Counter()
        self._figures_pruned: dict[str, int] = {}  # node -> the minute its day-old app figures were last dropped
        self.documents = DocumentTables(self)
        self.twins = TwinTables(self)
        self.workloads = WorkloadTables(self)
        self.routes = RouteTables(self)
        self.services = ServiceTables(self)
        self.upgrades = UpgradeTables(self)
        self.access = AccessTables(self)
        self.samples = SampleTables(self)
        self.batches = BatchTables(self)
        self.files = FileTables(self)
        self.requests = RequestTables(self)
        self.channels = ChannelTables(self)

    async def __aenter__(self) -> RegistryStore:
        self._database = await open_database(self.data_dir, self.db_url)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._database is not None:
            await self._database.close()
            self._database = None

    @property
    def database(self) -> Database:
        if self._database is None:
            raise StoreError("the registry store is not open")
        return self._database

    async def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self.database.rows(sql, *args)

    async def _write(self, sql: str, *args: Any) -> int:
        return await self.database.write(sql, *args)

    # --- join tokens ----------------------------------------------------------------------------------------------

    async def create_token(self, ttl: float, max_uses: int, labels: dict[str, str], workspace: str = "default",
                           prefix: str = "") -> tuple[str, str]:
        """(id, secret) of a new join token for nodes of a workspace (named `<prefix>-<random>` when they ask for
        no name); only a hash of the secret is kept."""
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        now = time.time()
        await self._write("INSERT INTO join_tokens (id, secret_hash, expires_at, max_uses, labels, created_at, "
                          "workspace, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", token_id, _hash(secret), now + ttl,
                          max_uses, json.dumps(labels), now, workspace, prefix)
        return token_id, secret

    async def join_tokens(self) -> list[tuple[Any, ...]]:
        """(id, expires at, max uses, uses, revoked, labels, created at, workspace, prefix) of every join token,
        newest first."""
        return [(*row[:5], json.loads(row[5]), *row[6:]) for row in await self._rows(
            "SELECT id, expires_at, max_uses, uses, revoked, labels, created_at, workspace, prefix FROM join_tokens "
            "ORDER BY created_at DESC")]

    async def join_token_prefix(self, token_id: str) -> str:
        """The name prefix of a join token's nodes; "" when it has none (or there is no such token)."""
        rows = await self._rows("SELECT prefix FROM join_tokens WHERE id=?", token_id)
        return str(rows[0][0]) if rows else ""

    async def join_token_workspace(self, token_id: str) -> str | None:
        rows = await self._rows("SELECT workspace FROM join_tokens WHERE id=?", token_id)
        return str(rows[0][0]) if rows else None

    async def revoke_token(self, token_id: str) -> None:
        if not await self._write("UPDATE join_tokens SET revoked=1 WHERE id=?", token_id):
            raise NotFound(f"no join token {token_id}")

    async def check_token(self, token_id: str, secret: str) -> dict[str, str]:
        """The labels of a token that may take one more node (nothing is spent); TokenRefused with the reason."""
        rows = await self._rows("SELECT secret_hash, expires_at, max_uses, uses, revoked, labels FROM join_tokens "
                                "WHERE id=?", token_id)
        if not rows or not hmac.compare_digest(rows[0][0], _hash(secret)):
            raise TokenRefused("unknown")
        _, expires_at, max_uses, uses, revoked, labels = rows[0]
        if revoked:
            raise TokenRefused("revoked")
        if expires_at < time.time():
            raise TokenRefused("expired")
        if uses >= max_uses:
            raise TokenRefused("used up")
        return dict(json.loads(labels))

    async def join_node(self, token_id: str, name: str, serial: str, labels: dict[str, str], interval: float,
                        group: str | None = None, workspace: str = "default") -> None:
        """Spend one use of a checked token and record its node in one transaction: a join refused on the way
        spends nothing. TokenRefused when another join took the last use meanwhile, NameTaken for the name."""
        # the WHERE clause keeps two joins at once from both taking the last use (the row stays locked until commit)
        spend = ("UPDATE join_tokens SET uses=uses+1 WHERE id=? AND uses < max_uses AND revoked=0 AND expires_at>=? "
                 "RETURNING uses", (token_id, time.time()))
        try:
            await self.database.transaction([spend, *node_statements(name, serial, labels, interval, group,
                                                                     workspace)], guard=0)
        except NothingMatched:
            raise TokenRefused("used up") from None
        except KeyTaken:
            raise NameTaken(f"node name {name} is taken") from None

    async def join_batch_node(self, batch: str, name: str, serial: str, labels: dict[str, str], interval: float,
                              group: str | None, workspace: str) -> bool:
        """Count one node against a batch and record it in one transaction; False (nothing recorded) when another
        node took the last place meanwhile, NameTaken for the name."""
        # the WHERE clause keeps two nodes at once from both taking the last place (the row stays locked until commit)
        take = ("UPDATE batches SET used=used+1 WHERE name=? AND used < max_count AND revoked=0 AND expires_at>=? "
                "RETURNING used", (batch, time.time()))
        try:
            await self.database.transaction(
                [take, *node_statements(name, serial, labels, interval, group, workspace, batch)], guard=0)
        except NothingMatched:
            return False
        except KeyTaken:
            raise NameTaken(f"node name {name} is taken") from None
        return True

    # --- nodes ------------------------------------------------------------------------------------------------

    async def node_names(self) -> set[str]:
        return {row[0] for row in await self._rows("SELECT name FROM nodes")}

    async def name_taken(self, name: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM nodes WHERE name=?", name))

    async def add_node(self, name: str, serial: str, labels: dict[str, str], interval: float,
                       group: str | None = None, workspace: str = "default") -> None:
        """Record a joined node (and its group, when a group's selector takes its labels)."""
        await self.database.transaction(node_statements(name, serial, labels, interval, group, workspace))

    async def node_serials(self) -> dict[str, str]:
        """The serial of every node's current certificate, by node name."""
        return {str(name): str(serial) for name, serial in await self._rows("SELECT name, serial FROM nodes")}

    async def check_certificate(self, name: str, serial: str) -> None:
        """Raise AuthError unless the certificate is the current, unrevoked one of a known node."""
        sql, args = _certificate_statement(name, serial)
        [row] = await self._rows(sql, *args)
        _check_certificate_row(row, serial)

    async def heartbeat(self, name: str, info: dict[str, Any], figures: list[AppFigures] | None = None) -> float:
        """Record a heartbeat (and its resource sample, `info.metrics`, and its app instances' figures); returns the
        node's heartbeat interval."""
        return (await self.beat(name, info, figures)).interval

    async def beat(self, name: str, info: dict[str, Any], figures: list[AppFigures] | None = None, *,
                   serial: str | None = None, unfinished_upgrades: Sequence[str] = ()) -> Beat:
        """Record a heartbeat as `heartbeat` does, in one trip to the database with what the answer needs of it.
        `serial`: the certificate the node called with; unless it is the node's current, unrevoked one, nothing is
        recorded and AuthError says why (as check_certificate). `unfinished_upgrades`: the states of upgrade tasks
        not finished; Beat.upgrading says whether a task is in one of them."""
        now = time.time()
        marks = ", ".join("?" for _ in unfinished_upgrades)
        upgrading = f"EXISTS (SELECT 1 FROM upgrade_tasks WHERE state IN ({marks}))" if marks else "0"
        where, where_args = ("name=?", (name,)) if serial is None else (
            "name=? AND serial=? AND NOT EXISTS (SELECT 1 FROM revoked_certificates WHERE serial=?)",
            (name, serial, serial))
        beat: Statement = (f"UPDATE nodes SET last_heartbeat=?, info=? WHERE {where} RETURNING interval, "
                           f"desired_version, {upgrading}", (now, json.dumps(info), *where_args,
                                                             *unfinished_upgrades))
        also = [*sample_statements(name, info.get("metrics"), now),
                *figures_statements(name, figures, now, self._figures_pruned)]
        try:  # state the node sends again at its next heartbeat: the commit need not wait for the disk
            rows = (await self.database.transaction([beat, *also], guard=0, durable=False))[0]
        except NothingMatched:
            if serial is not None:
                await self.check_certificate(name, serial)  # raises with the reason
            return Beat(0.0, 0, False)
        return Beat(float(rows[0][0]), int(rows[0][1]), bool(rows[0][2]))

    async def node_interval(self, name: str) -> float:
        """A node's heartbeat interval (0 for an unknown node)."""
        rows = await self._rows("SELECT interval FROM nodes WHERE name=?", name)
        return float(rows[0][0]) if rows else 0.0

    async def remove_node(self, name: str) -> None:
        """Forget a node and revoke its certificate: the registry refuses it from now on."""
        rows = await self._rows("SELECT serial FROM nodes WHERE name=?", name)
        if not rows:
            raise NotFound(f"no node {name}")
        await self.database.transaction([
            ("INSERT INTO revoked_certificates VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (rows[0][0], name,
                                                                                        time.time())),
            ("DELETE FROM nodes WHERE name=?", (name,)),
            ("DELETE FROM group_members WHERE node=?", (name,)),
            ("DELETE FROM messages WHERE node=?", (name,)),
            ("DELETE FROM node_metrics WHERE node=?", (name,)),
            ("DELETE FROM app_metrics WHERE node=?", (name,)),
            ("DELETE FROM device_twins WHERE node=?", (name,)),
            ("DELETE FROM device_desired WHERE node=?", (name,)),
            ("DELETE FROM workload_placements WHERE node=?", (name,)),
            ("DELETE FROM workload_status WHERE node=?", (name,)),
            ("DELETE FROM workload_events WHERE node=?", (name,)),
            ("DELETE FROM route_counters WHERE node=?", (name,)),
            ("DELETE FROM service_events WHERE node=?", (name,))])
        await self.database.notify(NODES_CHANNEL, name)  # its open channel is closed now

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node with its status (`healthy`, `offline`, `joined`) and the reason for it, and the replica its
        channel is open at (`replica`: id, relay address and since when, from replicas started with --peer-listen that
        are alive; None otherwise)."""
        await self.drop_expired_messages()
        now = time.time()
        groups = dict(await self._rows("SELECT node, group_name FROM group_members"))
        pending = dict(await self._rows("SELECT node, COUNT(*) FROM messages GROUP BY node"))
        replicas = await self.channels.holders()
        result = []
        for name, labels, joined_at, last, interval, info, expired, workspace, paused, alias in await self._rows(
                "SELECT name, labels, joined_at, last_heartbeat, interval, info, messages_expired, workspace, paused, "
                "alias FROM nodes ORDER BY name"):
            if last is None:
                status, reason = "joined", "no heartbeat yet"
            elif now - last > OFFLINE_AFTER * interval:
                status, reason = "offline", f"no heartbeat for {now - last:.0f}s"
            else:
                status, reason = "healthy", f"last heartbeat {now - last:.1f}s ago"
            details = json.loads(info)
            result.append({"name": name, "status": status, "reason": reason, "version": details.get("version"),
                           "last_heartbeat": last, "joined_at": joined_at, "labels": json.loads(labels),
                           "info": details, "group": groups.get(name),
                           "messages_pending": int(pending.get(name, 0)), "messages_expired": int(expired),
                           "workspace": workspace, "paused": bool(paused), "alias": alias,
                           "replica": replicas.get(name)})
        return result

    async def node_exists(self, name: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM nodes WHERE name=?", name))

    async def node_workspace(self, name: str) -> str | None:
        rows = await self._rows("SELECT workspace FROM nodes WHERE name=?", name)
        return str(rows[0][0]) if rows else None

    async def node_workspaces(self) -> dict[str, str]:
        """The workspace of every node."""
        return {str(name): str(workspace) for name, workspace in await self._rows("SELECT name, workspace FROM nodes")}

    async def workspaces_of(self, *names: str) -> dict[str, str]:
        """The workspace of each of these nodes the registry knows."""
        marks = ", ".join("?" for _ in names)
        return {str(name): str(workspace) for name, workspace in
                await self._rows(f"SELECT name, workspace FROM nodes WHERE name IN ({marks})", *names)} if names else {}

    async def placement_nodes(self) -> list[tuple[str, dict[str, str], float, float | None, float, bool, str]]:
        """(name, labels, joined at, last heartbeat, interval, paused, workspace) of every node."""
        return [(str(name), dict(json.loads(labels)), joined_at, last, float(interval), bool(paused), str(workspace))
                for name, labels, joined_at, last, interval, paused, workspace in await self._rows(
                    "SELECT name, labels, joined_at, last_heartbeat, interval, paused, workspace FROM nodes")]

    async def node_placement(self, name: str) -> tuple[dict[str, str], str, str | None] | None:
        """(labels, workspace, group) of one node; None for an unknown node."""
        rows = await self._rows("SELECT labels, workspace, group_name FROM nodes LEFT JOIN group_members ON "
                                "group_members.node=nodes.name WHERE name=?", name)
        if not rows:
            return None
        labels, workspace, group = rows[0]
        return dict(json.loads(labels)), str(workspace), None if group is None else str(group)

    async def node_group(self, name: str) -> str | None:
        """The group of a node; None when it is in none."""
        rows = await self._rows("SELECT group_name FROM group_members WHERE node=?", name)
        return str(rows[0][0]) if rows else None

    async def node_info(self, name: str) -> dict[str, Any]:
        """The info of one node's last heartbeat ({} for an unknown node or one without a heartbeat yet)."""
        rows = await self._rows("SELECT info FROM nodes WHERE name=?", name)
        with contextlib.suppress(ValueError):
            details = json.loads(rows[0][0] or "{}") if rows else {}
            return details if isinstance(details, dict) else {}
        return {}

    async def node_infos(self) -> dict[str, dict[str, Any]]:
        """The info of every node's last heartbeat (what it offers: `accelerators`, …)."""
        result: dict[str, dict[str, Any]] = {}
        for name, info in await self._rows("SELECT name, info FROM nodes"):
            with contextlib.suppress(ValueError):
                details = json.loads(info or "{}")
                result[str(name)] = details if isinstance(details, dict) else {}
        return result

    # --- documents --------------------------------------------------------------------------------------------

    async def put_documents(self, documents: Sequence[Document], workspace: str = "default",
                            also: Sequence[Statement] = (), concerned: Collection[str] | None = None) -> None:
        """Store (kind, namespace, name, node, JSON) documents of a workspace, replacing those with the same key,
        and run the statements `also` (the versions they make) in the same transaction; the channels of the nodes
        `concerned` look again (None: every node's)."""
        await self.documents.put(documents, workspace, also, concerned)

    async def node_documents(self, node: str) -> tuple[str, list[dict[str, Any]]]:
        """(resource version, documents) meant for a node: its devices and the models they use, its workloads and
        its endpoints and routes, the services of its workspace with their endpoints."""
        # what every node's heartbeat looks at, in one trip: its devices, the Endpoints, Routes and Services (for
        # both of theirs), its workloads' placements
        rows = await self.database.reads(_node_documents_statements(node))
        return await self._node_documents(node, *rows)

    async def node_sync(self, node: str, serial: str, desired_version: int
                        ) -> tuple[str, list[dict[str, Any]], list[tuple[str, str, str, Any, int]],
                                   list[dict[str, Any]]]:
        """What a node's open channel pushes, read in one trip: (resource version, documents) as node_documents,
        its desired values newer than `desired_version` as twins.desired_after, its unexpired messages as
        pending_messages; AuthError unless `serial` is the node's current, unrevoked certificate."""
        [certificate], *documents, desired, messages = await self.database.reads([
            _certificate_statement(node, serial), *_node_documents_statements(node),
            desired_after_statement(node, desired_version), _pending_messages_statement(node, time.time())])
        _check_certificate_row(certificate, serial)
        version, found = await self._node_documents(node, *documents)
        return version, found, desired_after_rows(desired), _pending_messages_rows(messages)

    async def _node_documents(self, node: str, device_rows: list[tuple[Any, ...]], shared_rows: list[tuple[Any, ...]],
                              placed_rows: list[tuple[Any, ...]]) -> tuple[str, list[dict[str, Any]]]:
        devices = [json.loads(document) for document, in device_rows]
        wanted = {(d.get("namespace", "default"), d["model"]) for d in devices if d.get("model")}
        models = [json.loads(doc) for ns, name, doc in (await self.documents.models() if wanted else [])
                  if (ns, name) in wanted]
        # the Workloads placed on the node, expanded and with their ConfigItems and Secrets: the registry's logic,
        # not the store's (and not loaded by the CLI commands that do not need it)
        from gateway.registry.routes import node_route_documents
        from gateway.registry.services import node_service_documents
        from gateway.registry.workloads import node_workload_documents

        shared = of_kinds_rows(shared_rows)
        documents = (models + devices + await node_workload_documents(self, node, placements_on_rows(placed_rows))
                     + await node_route_documents(self, node, shared)
                     + await node_service_documents(self, node, shared))
        version = hashlib.sha256(msgspec.json.encode(documents)).hexdigest()[:16]
        return version, documents

    # --- API tokens -------------------------------------------------------------------------------------------

    async def create_api_token(self, role: str) -> str:
        """A new bearer token `<id>.<secret>` for the registry API; only a hash of the secret is kept."""
        if role not in ROLES:
            raise ConfigError(f"--role {role}: expected one of {', '.join(ROLES)}")
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        await self._write("INSERT INTO api_tokens (id, secret_hash, role, created_at) VALUES (?, ?, ?, ?)", token_id,
                          _hash(secret), role, time.time())
        return f"{token_id}.{secret}"

    async def api_token_role(self, token: str) -> str:
        """The role of a bearer token; AuthError when it is unknown."""
        token_id, _, secret = token.partition(".")
        rows = await self._rows("SELECT secret_hash, role FROM api_tokens WHERE id=? AND revoked_at IS NULL",
                                token_id)
        if not rows or not hmac.compare_digest(rows[0][0], _hash(secret)):
            raise AuthError("unknown API token")
        return str(rows[0][1])

    # --- messages for nodes -----------------------------------------------------------------------------------

    async def node_online(self, name: str) -> bool:
        """Whether a node heartbeats; NotFound when there is no such node."""
        rows = await self._rows("SELECT last_heartbeat, interval FROM nodes WHERE name=?", name)
        if not rows:
            raise NotFound(f"no node {name}")
        last, interval = rows[0]
        return last is not None and time.time() - last <= OFFLINE_AFTER * interval

    async def queue_message(self, node: str, namespace: str, path: str, payload: bytes, ttl: float,
                            message_id: str | None = None) -> dict[str, Any]:
        """Queue a message for a node until it fetches it or `ttl` seconds pass."""
        message_id, now = message_id or secrets.token_hex(8), time.time()
        await self._write("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", message_id, node, namespace, path,
                          base64.b64encode(payload).decode(), now, now + ttl)
        self.message_counts["queued"] += 1
        return {"id": message_id, "expires_at": now + ttl}

    async def pending_messages(self, node: str, limit: int = MESSAGES_AT_ONCE) -> list[dict[str, Any]]:
        """The unexpired messages for a node, oldest first (payload base64)."""
        await self.drop_expired_messages()
        sql, args = _pending_messages_statement(node, time.time(), limit)
        return _pending_messages_rows(await self._rows(sql, *args))

    async def message_counts_by_node(self) -> dict[str, int]:
        """How many unexpired messages wait for each node (for the channel's sweep)."""
        return {str(node): int(count) for node, count in await self._rows(
            "SELECT node, COUNT(*) FROM messages WHERE expires_at>=? GROUP BY node", time.time())}

    async def ack_messages(self, node: str, ids: list[str]) -> int:
        """Delete messages a node has taken; how many were deleted."""
        results = await self.database.transaction(
            [("DELETE FROM messages WHERE node=? AND id=? RETURNING id", (node, message_id)) for message_id in ids])
        deleted = sum(len(rows) for rows in results)
        self.message_counts["delivered"] += deleted
        return deleted

    async def drop_expired_messages(self) -> int:
        """Delete expired messages, counting them per node (`messages_expired` in the node list)."""
        [dropped] = await self.database.transaction(
            [("DELETE FROM messages WHERE expires_at<? RETURNING node", (time.time(),))])
        per_node = collections.Counter(row[0] for row in dropped)
        self.message_counts["expired"] += len(dropped)
        for node, count in per_node.items():
            await self._write("UPDATE nodes SET messages_expired=messages_expired+? WHERE name=?", count, node)
        return len(dropped)

    # --- node groups ------------------------------------------------------------------------------------------

    async def create_group(self, name: str, nodes: list[str], selector: dict[str, str],
                           workspace: str = "default") -> list[str]:
        """Make a group in a workspace of its named nodes and those whose labels match the selector; its members.

        A node is in at most one group: ConfigError names the first node that is in another one already."""
        if not re.fullmatch(NAME_PATTERN, name) or len(name) > 253:
            raise ConfigError(f"group name {name!r}: expected lowercase letters, digits, '-' and '.'")
        if await self._rows("SELECT 1 FROM node_groups WHERE name=?", name):
            raise ConfigError(f"group {name} exists already")
        members = await self._group_members(name, nodes, selector, workspace)
        try:
            await self.database.transaction([
                ("INSERT INTO node_groups (name, selector, created_at, workspace) VALUES (?, ?, ?, ?)",
                 (name, json.dumps(selector), time.time(), workspace)),
                *[("INSERT INTO group_members VALUES (?, ?)", (node, name)) for node in members]])
        except Exception as exc:  # another registry replica took a node or the name in the meantime
            raise ConfigError(f"group {name}: {exc}") from None
        await self.database.notify(NODES_CHANNEL, nodes_payload(members))  # placement changed: they push it
        return members

    async def update_group(self, name: str, nodes: list[str], selector: dict[str, str]) -> list[str]:
        """Give a group a new selector and members (its named nodes and those the selector takes); its members."""
        rows = await self._rows("SELECT workspace FROM node_groups WHERE name=?", name)
        if not rows:
            raise NotFound(f"no group {name}")
        members = await self._group_members(name, nodes, selector, str(rows[0][0]))
        before = [str(node) for node, in await self._rows("SELECT node FROM group_members WHERE group_name=?", name)]
        try:
            await self.database.transaction([
                ("UPDATE node_groups SET selector=? WHERE name=?", (json.dumps(selector), name)),
                ("DELETE FROM group_members WHERE group_name=?", (name,)),
                *[("INSERT INTO group_members VALUES (?, ?)", (node, name)) for node in members]])
        except Exception as exc:  # another registry replica took a node in the meantime
            raise ConfigError(f"group {name}: {exc}") from None
        # placement changed for the members it had and has: their channels push it
        await self.database.notify(NODES_CHANNEL, nodes_payload({*before, *members}))
        return members

    async def _group_members(self, name: str, nodes: list[str], selector: dict[str, str],
                             workspace: str) -> list[str]:
        """The nodes of the workspace a group of these named nodes and this selector holds; ConfigError for a
        named node that does not exist there, or a member that another group holds."""
        labels = {row[0]: json.loads(row[1]) for row in await self._rows(
            "SELECT name, labels FROM nodes WHERE workspace=?", workspace)}
        for node in nodes:
            if node not in labels:
                raise ConfigError(f"--nodes: no node {node}")
        members = sorted(set(nodes) | ({node for node, have in labels.items() if _matches(selector, have)}
                                       if selector else set()))
        taken = dict(await self._rows("SELECT node, group_name FROM group_members"))
        for node in members:
            if taken.get(node, name) != name:
                raise ConfigError(f"node {node} is in group {taken[node]} already (a node is in at most one group)")
        return members

    async def groups(self) -> list[dict[str, Any]]:
        members: dict[str, list[str]] = collections.defaultdict(list)
        for node, group in await self._rows("SELECT node, group_name FROM group_members ORDER BY node"):
            members[group].append(node)
        return [{"name": name, "selector": json.loads(selector), "nodes": members[name]}
                for name, selector in await self._rows("SELECT name, selector FROM node_groups ORDER BY name")]

    async def group_members(self) -> dict[str, str]:
        """The group of every node in one, by node name."""
        return {str(node): str(group) for node, group in await self._rows(
            "SELECT node, group_name FROM group_members ORDER BY node")}

    async def group_workspaces(self) -> dict[str, str]:
        """The workspace of every group."""
        return {str(name): str(workspace) for name, workspace in await self._rows(
            "SELECT name, workspace FROM node_groups")}

    async def group_for_labels(self, labels: dict[str, str], workspace: str = "default") -> str | None:
        """The group of the workspace whose selector takes a joining node; ConfigError when several would."""
        matching = [name for name, selector in await self._rows(
                    "SELECT name, selector FROM node_groups WHERE workspace=?", workspace)
                    if (wanted := json.loads(selector)) and _matches(wanted, labels)]
        if len(matching) > 1:
            raise ConfigError(f"the node's labels match groups {', '.join(sorted(matching))}; a node is in at most "
                              "one group")
        return matching[0] if matching else None

    async def delete_group(self, name: str) -> None:
        """Delete a group; its nodes stay, in no group."""
        if not await self._rows("SELECT 1 FROM node_groups WHERE name=?", name):
            raise NotFound(f"no group {name}")
        [members, _] = await self.database.transaction([
            ("DELETE FROM group_members WHERE group_name=? RETURNING node", (name,)),
            ("DELETE FROM node_groups WHERE name=?", (name,))])
        # placement changed for its members: their channels push it
        await self.database.notify(NODES_CHANNEL, nodes_payload([str(node) for node, in members]))

    async def set_node_labels(self, name: str, labels: dict[str, str]) -> None:
        if not await self._write("UPDATE nodes SET labels=? WHERE name=?", json.dumps(labels), name):
            raise NotFound(f"no node {name}")
        await self.database.notify(NODES_CHANNEL, name)  # what goes to it by selector changed: its channel pushes it

    async def set_node_alias(self, name: str, alias: str) -> None:
        if not await self._write("UPDATE nodes SET alias=? WHERE name=?", alias, name):
            raise NotFound(f"no node {name}")

    async def set_paused(self, name: str, paused: bool) -> None:
        """Pause (or resume) placing new workload instances on a node; what runs there keeps running."""
        if not await self._write("UPDATE nodes SET paused=? WHERE name=?", int(paused), name):
            raise NotFound(f"no node {name}")

    async def move_node(self, name: str, workspace: str) -> None:
        """Move a node, and the devices meant for it, to another workspace; it leaves its group."""
        await self.database.transaction([
            ("UPDATE nodes SET workspace=? WHERE name=?", (workspace, name)),
            ("DELETE FROM group_members WHERE node=?", (name,)),
            ("UPDATE documents SET workspace=? WHERE node=?", (workspace, name))])
        await self.database.notify(NODES_CHANNEL, name)  # placement changed for it: its channel pushes it


def node_statements(name: str, serial: str, labels: dict[str, str], interval: float, group: str | None,
                    workspace: str, batch: str | None = None) -> list[Statement]:
    """The statements that record a joined node (and its group, when a group's selector takes its labels)."""
    statements: list[Statement] = [(
        "INSERT INTO nodes (name, serial, labels, joined_at, interval, workspace, batch) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, serial, json.dumps(labels), time.time(), interval, workspace, batch))]
    if group is not None:
        statements.append(("INSERT INTO group_members VALUES (?, ?)", (name, group)))
    return statements


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()



def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())

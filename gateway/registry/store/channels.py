"""Which registry replica holds each node's channel (`node_channels`) and which replicas are alive
(`registry_replicas`), for the relay between nodes whose channels are on different replicas (gateway.registry.peers).

A replica started with `--peer-listen` records itself (an id of its own and the address its replicas reach it at) and
refreshes its row every REPLICA_BEAT seconds; the replica a channel opens at records the node, and forgets the row
when the channel closes, unless another replica took the node since. A replica not seen for REPLICA_GONE_AFTER
seconds (killed, or cut off from the database) counts as gone: the lookups take its channel rows for none, and any
replica's sweep (`forget_gone`) deletes them. Ages are measured on the database's clock, so replicas whose own clocks
disagree still agree on which of them is gone."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.registry.store.db import Statement, Tables

REPLICA_BEAT = 2.0  # seconds between the refreshes of a replica's row
REPLICA_GONE_AFTER = 3 * REPLICA_BEAT  # seconds without a refresh after which a replica counts as gone
_NOW = {  # the database's clock in unix seconds
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "(EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION)",
}


class ChannelTables(Tables):
    gone_after = REPLICA_GONE_AFTER  # seconds without a refresh after which a replica counts as gone

    @property
    def _now(self) -> str:
        return _NOW[self.database.dialect]

    async def beat(self, replica: str, peer: str) -> bool:
        """`replica`, whose relay listener is at `peer` (HOST:PORT), is alive now; False when it had no row (it is
        new, or another replica took it for gone and deleted its rows)."""
        if await self.database.write(f"UPDATE registry_replicas SET seen_at={self._now}, peer=? WHERE id=?",
                                     peer, replica):
            return True
        await self.database.write(
            f"INSERT INTO registry_replicas (id, peer, started_at, seen_at) VALUES (?, ?, {self._now}, {self._now}) "
            "ON CONFLICT (id) DO UPDATE SET peer=excluded.peer, seen_at=excluded.seen_at", replica, peer)
        return False

    async def hold(self, node: str, replica: str, peer: str) -> None:
        """The node's channel is open at `replica`, whose relay listener is at `peer`."""
        await self.database.write(f"INSERT INTO node_channels (node, replica, peer, since) VALUES (?, ?, ?, "
                                  f"{self._now}) ON CONFLICT (node) DO UPDATE SET replica=excluded.replica, "
                                  "peer=excluded.peer, since=excluded.since", node, replica, peer)

    async def hold_again(self, nodes: Collection[str], replica: str, peer: str) -> None:
        """Record these channels at `replica` again after its rows were deleted, leaving a node another replica
        recorded since to that one."""
        statements: list[Statement] = [
            (f"INSERT INTO node_channels (node, replica, peer, since) VALUES (?, ?, ?, {self._now}) "
             "ON CONFLICT (node) DO NOTHING", (node, replica, peer)) for node in sorted(nodes)]
        if statements:
            await self.database.transaction(statements)

    async def release(self, node: str, replica: str) -> None:
        """The node's channel at `replica` closed (a row another replica wrote since stays)."""
        await self.database.write("DELETE FROM node_channels WHERE node=? AND replica=?", node, replica)

    async def release_all(self, replica: str) -> None:
        """This replica stops: none of its channels is open any more, and it is gone."""
        await self.database.transaction([("DELETE FROM node_channels WHERE replica=?", (replica,)),
                                         ("DELETE FROM registry_replicas WHERE id=?", (replica,))])

    async def holder(self, node: str) -> tuple[str, str, float | None] | None:
        """(replica, relay address, seconds since that replica was last seen — None when it has no row any more) of
        the replica the node's channel was recorded at; None when no replica recorded it. The caller takes a replica
        not seen for `gone_after` for gone."""
        rows = await self.database.rows(
            f"SELECT c.replica, c.peer, {self._now} - r.seen_at FROM node_channels c "
            "LEFT JOIN registry_replicas r ON r.id = c.replica WHERE c.node=?", node)
        if not rows:
            return None
        replica, peer, age = rows[0]
        return str(replica), str(peer), None if age is None else max(0.0, float(age))

    async def holders(self) -> dict[str, dict[str, Any]]:
        """The nodes whose channels a replica that is alive holds: {node: {"id", "peer", "since"}} of that replica
        (gone ones left out)."""
        rows = await self.database.rows(
            "SELECT c.node, c.replica, c.peer, c.since FROM node_channels c JOIN registry_replicas r "
            f"ON r.id = c.replica WHERE r.seen_at >= {self._now} - ?", self.gone_after)
        return {str(node): {"id": str(replica), "peer": str(peer), "since": float(since)}
                for node, replica, peer, since in rows}

    async def forget_gone(self) -> int:
        """Delete the rows of the replicas not seen for `gone_after` seconds and their channels' rows (with those of
        replicas that have no row); how many channel rows went."""
        alive = f"SELECT id FROM registry_replicas WHERE seen_at >= {self._now} - ?"
        results = await self.database.transaction([
            (f"DELETE FROM node_channels WHERE replica NOT IN ({alive}) RETURNING node", (self.gone_after,)),
            (f"DELETE FROM registry_replicas WHERE seen_at < {self._now} - ?", (self.gone_after,)),
        ])
        return len(results[0])

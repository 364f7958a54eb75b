"""Which registry replica holds each node's channel (`node_channels`), for the relay between nodes whose channels are
on different replicas (gateway.registry.peers): the replica a channel opens at records itself and the address its
replicas reach it at (its `--peer-listen`), and forgets the row when the channel closes, unless another replica took
the node since."""

from __future__ import annotations

import time

from gateway.registry.store.db import Tables


class ChannelTables(Tables):
    async def hold(self, node: str, replica: str, peer: str) -> None:
        """The node's channel is open at `replica`, whose relay listener is at `peer` (HOST:PORT)."""
        await self.database.write("INSERT INTO node_channels (node, replica, peer, since) VALUES (?, ?, ?, ?) "
                                  "ON CONFLICT (node) DO UPDATE SET replica=excluded.replica, peer=excluded.peer, "
                                  "since=excluded.since", node, replica, peer, time.time())

    async def release(self, node: str, replica: str) -> None:
        """The node's channel at `replica` closed (a row another replica wrote since stays)."""
        await self.database.write("DELETE FROM node_channels WHERE node=? AND replica=?", node, replica)

    async def release_all(self, replica: str) -> None:
        """This replica stops: none of its channels is open any more."""
        await self.database.write("DELETE FROM node_channels WHERE replica=?", replica)

    async def holder(self, node: str) -> tuple[str, str] | None:
        """(replica, relay address) of the replica holding the node's channel; None when no replica says so."""
        rows = await self.database.rows("SELECT replica, peer FROM node_channels WHERE node=?", node)
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

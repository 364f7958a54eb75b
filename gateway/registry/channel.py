"""The registry's side of the channel: one WebSocket per node over mutual TLS (`GET /api/v1/channel`, upgraded).

The node says what it has (Hello: resource version, desired version); the registry pushes what is newer at once and
again whenever something for the node is stored: its documents (a new resource version), desired values, REST
messages and requests (logs, workload actions). A store write notifies the nodes it concerns (gateway.registry.store
NODES_CHANNEL, the nodes named or every node; gateway.registry.concerned for documents; and the messages' CHANNEL):
in-process on SQLite, PostgreSQL NOTIFY to every replica, and only those nodes' channels look at the database. A
sweep every SWEEP_EVERY s finds what another process wrote without a notification reaching this one (a CLI on the
same SQLite file), a node removed included. The node acknowledges each push once applied; what a dropped connection
did not acknowledge is pushed again on the next one, and the node applies by version and message id, so nothing is
applied twice. Heartbeats travel as frames and are taken as the HTTPS heartbeat is (gateway.registry.app.
take_heartbeat), its twin-report rate limit included (a refused one answered with `refused` and the status). The
node's answers to requests go to the call that waits, on this replica or another (gateway.registry.logs.
deliver_answer). Byte streams: `hub.open_stream(node, kind, meta)`, and `hub.handlers[kind]` for the streams nodes
open (gateway.channel).

A node certificate the registry revoked (or a node it removed) gets a Refused frame with the reason and the
connection closes with code 1008; a frame that breaks the protocol closes it with 1002 and the reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import WebSocket, post, websocket
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.params import FromPath

from gateway.channel import PROBE_KIND, ChannelError, Multiplexer, Stream, StreamHandler, decode_frame, discard
from gateway.errors import AuthError, ConfigError, NotFound
from gateway.registry.access import audited, node_workspace, require_caller, workspace_scope
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.ca import peer_identity
from gateway.registry.store.db import EVERY_NODE, payload_nodes
from gateway.registry.twins import check_report_rate
from gateway.wire import (
    CHANNEL_PATH,
    CHANNEL_VERSION,
    MAX_CHANNEL_FRAME,
    MAX_REASON,
    Ack,
    Answer,
    DesiredValue,
    Heartbeat,
    HeartbeatAnswer,
    Hello,
    NodeMessage,
    Push,
    Refused,
    Welcome,
)

if TYPE_CHECKING:
    from gateway.registry.logs import LogRequests
    from gateway.registry.peers import PeerRelay
    from gateway.registry.store import RegistryStore

log = logging.getLogger(__name__)
MAX_PROBE = 1 << 30
SWEEP_EVERY = 1.0  # seconds between two looks at the database for changes no notification told of
DROP_EXPIRED_EVERY = 30  # sweeps between two drops of expired messages (counted per node as they go)
HELLO_TIMEOUT = 10.0
REFUSED_CODE = 1008  # WebSocket close code "policy violation": a certificate refused
PROTOCOL_ERROR_CODE = 1002  # WebSocket close code "protocol error": a frame the channel cannot take


class NodeSession:
    """One node's open channel on this replica."""

    def __init__(self, hub: ChannelHub, store: RegistryStore, node: str, serial: str,
                 socket: WebSocket[Any, Any, Any], hello: Hello) -> None:
        self.hub = hub
        self.store = store
        self.node = node
        self.serial = serial
        self.socket = socket
        self.resource_version = hello.resource_version  # what the node has, or was pushed on this connection
        self.desired_version = hello.desired_version
        self.sent_messages: set[str] = set()  # pushed on this connection, not acknowledged yet
        self.mux = Multiplexer(socket.send_bytes, odd=False, handlers=hub.handlers, peer=node)
        self.changed = asyncio.Event()
        self.changed.set()  # the first sync right after Welcome
        self._seq = 0
        self.pushes = 0
        self.connected_at = time.time()
        self.seen_from = socket.client.host if socket.client else None

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def run(self) -> None:
        """Read, push and write until the connection ends or one of them fails (its exception ends the session)."""
        tasks = [asyncio.create_task(self._read(), name=f"channel {self.node} reader"),
                 asyncio.create_task(self.mux.run_writer(), name=f"channel {self.node} writer"),
                 asyncio.create_task(self._sync_loop(), name=f"channel {self.node} sync")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.mux.close("channel closed")

    async def _read(self) -> None:
        while True:
            frame = decode_frame(await self.socket.receive_bytes())
            if frame is None or self.mux.dispatch(frame):
                continue
            await self._take(frame)
            del frame  # not kept while the connection waits for the next one

    async def check_certificate(self) -> None:
        try:
            await self.store.check_certificate(self.node, self.serial)
        except AuthError as exc:
            raise ChannelRefused(str(exc)) from None

    async def _take(self, frame: Any) -> None:
        if isinstance(frame, Heartbeat):
            from gateway.registry.app import take_heartbeat

            if frame.body.twins is not None:
                try:  # the same limit as over HTTPS, and the same refusal
                    check_report_rate(self.socket.app.state, self.node)
                except HTTPException as exc:
                    await self.check_certificate()  # a revoked node is refused, not told to slow down
                    self.mux.send_control(HeartbeatAnswer(seq=frame.seq, refused=str(exc.detail)[:MAX_REASON],
                                                          status=exc.status_code))
                    return
            try:  # the certificate checked as the heartbeat is recorded
                answer = await take_heartbeat(self.store, self.node, frame.body, self.seen_from,
                                              self.hub.channel_address, self.serial)
            except AuthError as exc:
                raise ChannelRefused(str(exc)) from None
            if answer.documents is not None:
                self.resource_version = answer.resource_version
            if answer.desired:
                self.desired_version = max(self.desired_version, *(value.version for value in answer.desired))
            self.mux.send_control(HeartbeatAnswer(seq=frame.seq, body=answer))
        elif isinstance(frame, Ack):
            now = time.time()
            if frame.desired_ack is not None:
                refused = [(error.device.partition("/")[0], error.device.partition("/")[2], error.property,
                            error.version, error.error[:500]) for error in frame.desired_ack.errors]
                await self.store.twins.record(self.node, None, False, frame.desired_ack.version, refused, now)
            if frame.messages:
                await self.store.ack_messages(self.node, frame.messages)
                self.sent_messages.difference_update(frame.messages)
        elif isinstance(frame, Answer):
            await self._answer(frame)
            self.mux.send_control(Ack(seq=frame.seq))
        else:
            raise ChannelError(f"a {type(frame).__name__} frame from a node")

    async def _answer(self, frame: Answer) -> None:
        """The node's answer to a request: to the call waiting here, or stored for the replica whose call waits."""
        from gateway.registry.logs import deliver_answer

        try:
            await deliver_answer(self.store, self.hub.log_requests, self.node, frame.request, frame.body)
        except NotFound:
            return  # timed out meanwhile
        except ConfigError as exc:  # not an answer of the kind asked: the waiting call gets the reason
            await deliver_answer(self.store, self.hub.log_requests, self.node, frame.request,
                                 msgspec.json.encode({"error": str(exc)[:500]}))

    async def _sync_loop(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            await self.sync()

    async def sync(self) -> None:
        """Push what is newer than what the node has (ChannelRefused when its certificate was revoked meanwhile)."""
        self.hub.syncs += 1
        try:  # the certificate, the documents, the desired values and the messages: one look
            version, documents, desired, pending = await self.store.node_sync(self.node, self.serial,
                                                                              self.desired_version)
        except AuthError as exc:
            raise ChannelRefused(str(exc)) from None
        push = Push(seq=0)
        if version != self.resource_version:
            push.resource_version, push.documents = version, documents
            self.resource_version = version
        if desired:
            push.desired = [DesiredValue(device=f"{ns}/{name}", property=prop, value=value, version=number)
                            for ns, name, prop, value, number in desired]
            self.desired_version = max(number for *_, number in desired)
        messages = [message for message in pending if message["id"] not in self.sent_messages]
        if messages:
            push.messages = [NodeMessage(id=m["id"], namespace=m["namespace"], path=m["path"], payload=m["payload"])
                             for m in messages]
            self.sent_messages.update(m["id"] for m in messages)
        if push.documents is not None or push.desired or push.messages:
            push.seq = self.next_seq()
            self.pushes += 1
            self.mux.send_control(push)


class ChannelRefused(ChannelError):
    """The node may not use the channel (any more): the reason goes to it in a Refused frame."""



async def probe(hub: ChannelHub, node: str, size: int) -> dict[str, Any]:
    """Send `size` bytes to a node on a PROBE_KIND stream and wait for its count: the channel's throughput."""
    started = time.monotonic()
    stream = await hub.open_stream(node, PROBE_KIND, {"bytes": size})
    block = bytes(64 << 10)
    left = size
    while left > 0:
        await stream.send(block[:left])
        left -= min(left, len(block))
    await stream.close()
    answer = b""
    while chunk := await stream.receive():
        answer += chunk[:32]
    seconds = time.monotonic() - started
    received = int(answer) if answer.isdigit() else -1
    return {"node": node, "bytes": size, "received": received, "seconds": round(seconds, 3),
            "bytes_per_s": round(size / seconds) if seconds > 0 else None}


class ChannelHub:
    """The channels open on this replica, by node; `wake` is the listener of the store's notifications."""

    def __init__(self, log_requests: LogRequests, channel_address: str) -> None:
        self.sessions: dict[str, NodeSession] = {}
        self.handlers: dict[str, StreamHandler] = {PROBE_KIND: discard}
        self.log_requests = log_requests
        self.channel_address = channel_address
        self._fingerprint: str | None = None  # of the documents at the sweep's last look (None: no look yet)
        self._documents_told = False  # a notification told of a change of documents since the sweep's last look
        self._unexplained = False  # the last look found documents changed that no notification had told of yet
        self.connections = 0
        self.syncs = 0  # times a channel looked at the store for what is new for its node
        self.peers: PeerRelay | None = None  # the relay between replicas (--peer-listen)
        self.relays: collections.Counter[str] = collections.Counter()  # relay streams: local, to/from a replica

    def wake(self, payload: str) -> None:
        """A notification (NODES_CHANNEL, or a message's CHANNEL): the channels of the nodes it names look again."""
        nodes, documents = payload_nodes(payload)
        if documents:
            self._documents_told = True
        if nodes is None:
            for session in self.sessions.values():
                session.changed.set()
            return
        for node in nodes if len(nodes) < len(self.sessions) else [n for n in self.sessions if n in nodes]:
            if (one := self.sessions.get(node)) is not None:
                one.changed.set()

    async def open_stream(self, node: str, kind: str, meta: dict[str, Any] | None = None) -> Stream:
        """A byte stream to a node whose channel is open on this replica; ChannelError when it is not."""
        session = self.sessions.get(node)
        if session is None:
            raise ChannelError(f"node {node} has no channel open on this registry replica")
        return await session.mux.open_stream(kind, meta)

    async def sweep(self, store: RegistryStore) -> None:
        """Wake the channels of nodes something was stored for that no notification told this replica of; drop
        the expired messages now and then (a sync reads the unexpired ones only)."""
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            if not self.sessions:
                continue
            sweeps += 1
            try:
                if sweeps % DROP_EXPIRED_EVERY == 0:
                    await store.drop_expired_messages()
                # documents changed and no notification told of it by the next look (another process on the same
                # SQLite file, a notification lost): every channel looks. A change a notification told of woke the
                # channels it concerns already; one look's grace lets a notification that comes after the commit
                # (PostgreSQL NOTIFY, a writer not yet resumed) arrive before every channel is woken for nothing.
                fingerprint = await store.documents.fingerprint()
                told, self._documents_told = self._documents_told, False
                if self._unexplained and not told:
                    self.wake(EVERY_NODE)
                self._unexplained = False
                if fingerprint != self._fingerprint:
                    self._unexplained = self._fingerprint is not None and not told
                    self._fingerprint = fingerprint
                for node, version in (await store.twins.latest_versions()).items():
                    session = self.sessions.get(node)
                    if session is not None and version > session.desired_version:
                        session.changed.set()
                serials = await store.node_serials()
                for node, session in self.sessions.items():
                    if serials.get(node) != session.serial:  # removed: its sync refuses the channel
                        session.changed.set()
                for node, count in (await store.message_counts_by_node()).items():
                    session = self.sessions.get(node)
                    if session is not None and count > len(session.sent_messages):
                        session.changed.set()
            except Exception as exc:  # the database away for a moment: the next sweep tries again
                log.warning("channel sweep failed: %s", exc)


def _peer(socket: WebSocket[Any, Any, Any]) -> tuple[str, str] | None:
    extensions: dict[str, Any] = dict(socket.scope.get("extensions") or {})
    chain: list[str] = (extensions.get("tls") or {}).get("client_cert_chain") or []
    return peer_identity(chain[0]) if chain else None


def _close_reason(reason: str) -> str:
    """A reason that fits a WebSocket close frame (123 bytes of UTF-8)."""
    return reason.encode()[:120].decode(errors="ignore")


async def _refuse(socket: WebSocket[Any, Any, Any], reason: str) -> None:
    with contextlib.suppress(Exception):
        await socket.send_bytes(msgspec.msgpack.encode(Refused(reason=reason)))
        await socket.close(code=REFUSED_CODE, reason=_close_reason(reason))


@websocket(CHANNEL_PATH, summary="The node's channel (WebSocket, mutual TLS): pushes, heartbeats, byte streams")
async def channel(socket: WebSocket[Any, Any, Any]) -> None:
    hub: ChannelHub = socket.app.state.channel
    store: RegistryStore = socket.app.state.store
    await socket.accept()
    identity = _peer(socket)
    if identity is None:
        await _refuse(socket, "a client certificate from the registry CA is required")
        return
    node, serial = identity
    try:
        await store.check_certificate(node, serial)
    except AuthError as exc:
        log.warning("channel of node %s refused: %s", node, exc)
        await _refuse(socket, str(exc))
        return
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            hello = decode_frame(await socket.receive_bytes())
        if not isinstance(hello, Hello):
            raise ChannelError("expected Hello first")
    except (TimeoutError, ChannelError, WebSocketDisconnect) as exc:
        await _refuse(socket, f"no Hello: {exc}")
        return
    await _serve_node(hub, store, node, serial, socket, hello)


async def _serve_node(hub: ChannelHub, store: RegistryStore, node: str, serial: str,
                      socket: WebSocket[Any, Any, Any], hello: Hello) -> None:
    interval = await store.node_interval(node)  # its first heartbeat frame follows at once
    await socket.send_bytes(msgspec.msgpack.encode(Welcome(version=CHANNEL_VERSION, node=node,
                                                           heartbeat_interval=interval)))
    session = NodeSession(hub, store, node, serial, socket, hello)
    previous = hub.sessions.get(node)
    hub.sessions[node] = session
    hub.connections += 1
    if previous is not None:  # the node came back before its old connection was noticed gone
        with contextlib.suppress(Exception):
            await previous.socket.close(code=1000, reason="replaced by a new connection")
    log.info("channel of node %s open", node)
    if hub.peers is not None:
        await hub.peers.hold(node)
    try:
        await session.run()
    except (WebSocketDisconnect, ConnectionError):
        pass
    except ChannelRefused as exc:
        log.warning("channel of node %s refused: %s", node, exc)
        await _refuse(socket, str(exc))
    except ChannelError as exc:  # a frame that breaks the protocol: the node is told why (1002, protocol error)
        log.warning("channel of node %s closed: %s", node, exc)
        with contextlib.suppress(Exception):
            await socket.close(code=PROTOCOL_ERROR_CODE, reason=_close_reason(str(exc)))
    finally:
        if hub.sessions.get(node) is session:
            del hub.sessions[node]
            if hub.peers is not None:
                await hub.peers.release(node)
        log.info("channel of node %s closed", node)


@post("/api/v1/nodes/{node:str}/channel/probe", status_code=200,
      summary="Send ?bytes= (default 1 MiB) to a node over its channel and measure the throughput (nodes.manage)")
async def channel_probe(request: AnyRequest, node: FromPath[str]) -> dict[str, Any]:
    caller = await require_caller(request, "nodes.manage")
    store = store_of(request)
    raw = request.query_params.get("bytes", str(1 << 20))
    if not raw.isdigit() or not 0 < int(raw) <= MAX_PROBE:
        raise ConfigError(f"?bytes={raw[:40]}: expected a whole number from 1 to {MAX_PROBE}")
    workspace = await node_workspace(store, node)
    if workspace is None or not caller.sees(workspace):
        raise NotFound(f"no node {node}")
    hub: ChannelHub = request.app.state.channel
    async with audited(store, caller, "node.channel-probe", f"node/{node}", workspace_scope(workspace)) as entry:
        entry.detail = {"bytes": int(raw)}
        try:
            return await probe(hub, node, int(raw))
        except ChannelError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None


ROUTE_HANDLERS = [channel, channel_probe]
__all__ = ["MAX_CHANNEL_FRAME", "ROUTE_HANDLERS", "ChannelHub", "NodeSession"]

"""GET /metrics on the registry: its state in the Prometheus text format, behind an API token (viewer or above,
as the gateway's /metrics).

Heartbeats and joins are counted by a middleware from the status of each answer, so the handlers stay as they are;
messages are counted by the store. These counters belong to one registry process: with several replicas on one
PostgreSQL database, Prometheus scrapes each and sums them. Node figures (status, last heartbeat, uplink latency)
come from the database at scrape time and cover the nodes the token may see.
"""

from __future__ import annotations

import bisect
import collections
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import psutil
from litestar import Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.registry.auth import AnyRequest, store_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEARTBEAT_PATH = "/api/v1/heartbeat"
JOIN_PATHS = {"/api/v1/join": "token", "/api/v1/join/batch": "batch"}  # path -> the join's method label
JOIN_OUTCOMES = ("joined", "refused", "conflict", "invalid", "throttled", "failed")
HEARTBEAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
NODE_STATUSES = ("healthy", "offline", "joined")
MESSAGE_EVENTS = ("queued", "delivered", "expired")


def heartbeat_outcome(status: int) -> str:
    return "accepted" if status < 300 else "refused" if status in (401, 403) else "failed"


def join_outcome(status: int) -> str:
    """joined, refused (a token that cannot be used), conflict (name taken, several groups), invalid, throttled
    (too many failed joins) or failed."""
    if status < 300:
        return "joined"
    return {403: "refused", 409: "conflict", 429: "throttled"}.get(status, "invalid" if status < 500 else "failed")


class RegistryMetrics:
    """The heartbeat and join counters of one registry process."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.heartbeats: collections.Counter[str] = collections.Counter()
        self.heartbeat_buckets = [0] * (len(HEARTBEAT_BUCKETS) + 1)
        self.heartbeat_seconds = 0.0
        self.joins: collections.Counter[tuple[str, str]] = collections.Counter()  # (method, outcome)
        self.files: collections.Counter[str] = collections.Counter()  # gateway.registry.files' counters

    def observe(self, path: str, status: int, seconds: float) -> None:
        if path == HEARTBEAT_PATH:
            self.heartbeats[heartbeat_outcome(status)] += 1
            self.heartbeat_buckets[bisect.bisect_left(HEARTBEAT_BUCKETS, seconds)] += 1
            self.heartbeat_seconds += seconds
        elif path in JOIN_PATHS:
            self.joins[JOIN_PATHS[path], join_outcome(status)] += 1


class MetricsMiddleware:
    """Counts heartbeats and joins (with a token or a batch bundle) by their answer's status and times heartbeats;
    every other request passes through."""

    def __init__(self, app: ASGIApp, metrics: RegistryMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (path != HEARTBEAT_PATH and path not in JOIN_PATHS) or scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe(path, status, time.perf_counter() - started)


class RegistryCollector(Collector):
    """The families of one scrape: process counters now, node figures read from the database just before."""

    def __init__(self, metrics: RegistryMetrics, nodes: list[dict[str, Any]], backend: str,
                 messages: collections.Counter[str], pending: int, channels: int = 0, syncs: int = 0,
                 relays: Mapping[str, int] | None = None) -> None:
        self.metrics = metrics
        self.relays = relays or {}
        self.channels = channels
        self.syncs = syncs
        self.nodes = nodes
        self.backend = backend
        self.messages = messages
        self.pending = pending

    def collect(self) -> Iterator[Metric]:
        yield from self._registry()
        yield from self._process()
        yield from self._nodes()
        yield from self._traffic()

    def _registry(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("fieldgate_registry_build_info", "fieldgate version and database backend",
                                 labels=["version", "backend"])
        info.add_metric([__version__, self.backend], 1)
        yield info
        yield GaugeMetricFamily("fieldgate_registry_start_time_seconds", "When this registry process started "
                                "(unix time)", value=self.metrics.started_at)
        yield GaugeMetricFamily("fieldgate_registry_channels_open", "Node channels (WebSockets) open on this "
                                "registry process", value=self.channels)
        yield CounterMetricFamily("fieldgate_registry_channel_syncs", "Times a node channel on this registry process "
                                  "looked at the database for what is new for its node", value=self.syncs)
        streams = CounterMetricFamily("fieldgate_registry_relay_streams", "Relayed service streams between nodes this "
                                      "registry process carried: both channels here (local), on to the replica "
                                      "holding the target's channel (to_replica), from another replica "
                                      "(from_replica); failed: a link between replicas refused or broken",
                                      labels=["path"])
        for path in ("local", "to_replica", "from_replica", "failed"):
            streams.add_metric([path], self.relays.get(path, 0))
        yield streams
        relayed = CounterMetricFamily("fieldgate_registry_relay_bytes", "Bytes of relayed service streams sent to "
                                      "and received from other registry replicas", labels=["direction"])
        relayed.add_metric(["sent"], self.relays.get("bytes_sent", 0))
        relayed.add_metric(["received"], self.relays.get("bytes_received", 0))
        yield relayed
        refused = CounterMetricFamily("fieldgate_registry_relay_refused", "Relayed service streams this registry "
                                      "process refused, by reason: a caller of its replica listener without a "
                                      "replica's certificate (certificate), nodes that do not exist or share no "
                                      "workspace (workspace), a target whose channel is not here (channel), a target "
                                      "whose replica is gone (gone)", labels=["reason"])
        for reason in ("certificate", "workspace", "channel", "gone"):
            refused.add_metric([reason], self.relays.get(f"refused_{reason}", 0))
        yield refused
        if "refresh_failing" in self.relays:  # a replica started with --peer-listen
            yield GaugeMetricFamily("fieldgate_registry_replica_refresh_failing", "1 while this replica cannot "
                                    "refresh its row in the database (the other replicas take it for gone after "
                                    "three refreshes missed)", value=self.relays["refresh_failing"])
            yield CounterMetricFamily("fieldgate_registry_replica_gone_rows", "Channel rows of gone registry "
                                      "replicas this replica deleted", value=self.relays.get("gone_rows", 0))

    def _process(self) -> Iterator[Metric]:
        process = psutil.Process(os.getpid())
        with process.oneshot():
            cpu = process.cpu_times()
            rss = process.memory_info().rss
            fds = process.num_fds()
        yield CounterMetricFamily("fieldgate_registry_process_cpu_seconds_total", "CPU time of the registry process",
                                  value=cpu.user + cpu.system)
        yield GaugeMetricFamily("fieldgate_registry_process_resident_memory_bytes",
                                "Resident memory of the registry process", value=rss)
        yield GaugeMetricFamily("fieldgate_registry_process_open_fds", "Open file descriptors of the registry process",
                                value=fds)

    def _nodes(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("fieldgate_registry_nodes", "Nodes by status", labels=["status"])
        counts = collections.Counter(node["status"] for node in self.nodes)
        for status in sorted(set(NODE_STATUSES) | set(counts)):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        age = GaugeMetricFamily("fieldgate_registry_node_last_heartbeat_age_seconds",
                                "Seconds since the node's last heartbeat (nodes that sent one)", labels=["node"])
        latency = GaugeMetricFamily("fieldgate_registry_node_uplink_latency_seconds",
                                    "Round trip of the node's previous heartbeat, as the node measured it",
                                    labels=["node"])
        now = time.time()
        for node in self.nodes:
            if node.get("last_heartbeat") is not None:
                age.add_metric([node["name"]], max(now - node["last_heartbeat"], 0.0))
            milliseconds = (node.get("info") or {}).get("uplink_latency_ms")
            if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool):
                latency.add_metric([node["name"]], milliseconds / 1000)
        yield age
        yield latency

    def _traffic(self) -> Iterator[Metric]:
        heartbeats = CounterMetricFamily("fieldgate_registry_heartbeats_total",
                                         "Heartbeats received, by outcome (accepted, refused, failed)",
                                         labels=["outcome"])
        for outcome in ("accepted", "refused", "failed"):
            heartbeats.add_metric([outcome], self.metrics.heartbeats.get(outcome, 0))
        yield heartbeats
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(str, HEARTBEAT_BUCKETS), "+Inf"), self.metrics.heartbeat_buckets, strict=True):
            total += count
            buckets.append((bound, total))
        yield HistogramMetricFamily("fieldgate_registry_heartbeat_duration_seconds",
                                    "Time to handle a heartbeat, from its request to its answer",
                                    buckets=buckets, sum_value=self.metrics.heartbeat_seconds)
        joins = CounterMetricFamily("fieldgate_registry_join_attempts_total",
                                    "Join attempts by method (token, batch) and outcome (joined, refused, conflict, "
                                    "invalid, throttled, failed)", labels=["method", "outcome"])
        for method in JOIN_PATHS.values():
            for outcome in JOIN_OUTCOMES:
                joins.add_metric([method, outcome], self.metrics.joins.get((method, outcome), 0))
        yield joins
        for event in MESSAGE_EVENTS:
            yield CounterMetricFamily(f"fieldgate_registry_messages_{event}_total", f"Messages for nodes {event} "
                                      "by this registry process", value=self.messages.get(event, 0))
        yield GaugeMetricFamily("fieldgate_registry_messages_pending", "Messages waiting for their nodes",
                                value=self.pending)
        files = self.metrics.files
        yield CounterMetricFamily("fieldgate_registry_file_bytes_sent_total", "File bytes sent to nodes (chunks "
                                  "served) by this registry process", value=files["bytes_sent"])
        yield CounterMetricFamily("fieldgate_registry_file_bytes_received_total", "File bytes received from nodes "
                                  "(chunks taken, corrupted ones too) by this registry process",
                                  value=files["bytes_received"])
        yield CounterMetricFamily("fieldgate_registry_file_chunks_corrupted_total", "Chunks from nodes refused for "
                                  "a SHA-256 mismatch", value=files["chunks_corrupted"])
        outcomes = CounterMetricFamily("fieldgate_registry_files_total", "Files by direction and outcome, by this "
                                       "registry process", labels=["direction", "outcome"])
        for direction, outcome, key in (("to-edge", "pushed", "files_pushed"), ("to-edge", "done", "to_edge_done"),
                                        ("to-edge", "refused", "to_edge_refused"),
                                        ("from-edge", "done", "from_edge_done"),
                                        ("from-edge", "refused", "from_edge_refused")):
            outcomes.add_metric([direction, outcome], files[key])
        yield outcomes


def relay_counters(hub: Any) -> dict[str, int]:
    """The relay's counters of this process (gateway.registry.services and gateway.registry.peers)."""
    counters = {"local": hub.relays["local"]}
    if hub.peers is not None:
        peer = hub.peers.counters
        counters |= {"to_replica": peer["streams_out"], "from_replica": peer["streams_in"],
                     "failed": peer["failed"] + peer["refused"],
                     "bytes_sent": peer["bytes_out_sent"] + peer["bytes_in_sent"],
                     "bytes_received": peer["bytes_out_received"] + peer["bytes_in_received"],
                     **{key: count for key, count in peer.items() if key.startswith("refused_")},
                     "refresh_failing": int(hub.peers.beat_state.startswith("failing")),
                     "gone_rows": peer["gone_rows"]}
    return counters


@get("/metrics", summary="The registry's metrics in the Prometheus text format (an API token, viewer or above)",
     media_type=CONTENT_TYPE)
async def metrics(request: AnyRequest) -> Response[bytes]:
    from gateway.registry import access

    caller = await access.require_caller(request, "nodes.read")
    store = store_of(request)
    nodes = await access.visible_nodes(store, caller)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector(request.app.state.metrics, nodes, store.database.dialect,
                                        store.message_counts, sum(node["messages_pending"] for node in nodes),
                                        len(request.app.state.channel.sessions), request.app.state.channel.syncs,
                                        relay_counters(request.app.state.channel)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)


ROUTE_HANDLERS = [metrics]

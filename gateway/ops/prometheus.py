"""The Prometheus collector of the gateway: every family read from the live state at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, get_args

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.api import GatewayAPI
from gateway.pipeline.poller import LATENESS_BUCKETS
from gateway.pipeline.twin import DeviceState

DEVICE_STATES: tuple[str, ...] = get_args(DeviceState)


class GatewayCollector(Collector):
    """The metrics of one gateway; `outboxes` is the store's outbox_stats() taken just before the scrape."""

    def __init__(self, gateway: GatewayAPI, outboxes: dict[str, dict[str, Any]]) -> None:
        self.gateway = gateway
        self.outboxes = outboxes

    def collect(self) -> Iterator[Metric]:
        yield from self._gateway()
        yield from self._process()
        yield from self._node()
        yield from self._devices()
        yield from self._sinks()
        yield from self._tasks()
        yield from self._files()
        yield from self._workloads()
        yield from self._services()

    def _gateway(self) -> Iterator[Metric]:
        gw = self.gateway
        info = GaugeMetricFamily("fieldgate_build_info", "fieldgate version and node name",
                                 labels=["version", "node"])
        info.add_metric([__version__, gw.node_name], 1)
        yield info
        yield GaugeMetricFamily("fieldgate_start_time_seconds", "When the gateway started (unix time)",
                                value=gw.started_at)
        failures = getattr(gw.pm, "load_failures", {})
        yield GaugeMetricFamily("fieldgate_plugin_load_failures", "Plugins that failed to load",
                                value=len(failures))
        link = gw.eventbus_status()
        if link is not None:
            yield GaugeMetricFamily("fieldgate_eventbus_connected", "1 when the local MQTT broker is connected",
                                    value=1 if link["connected"] else 0)
            yield CounterMetricFamily("fieldgate_eventbus_received_messages_total",
                                      "Messages received from local apps", value=link["received"])
            yield CounterMetricFamily("fieldgate_eventbus_rejected_messages_total",
                                      "Messages from local apps that were refused", value=link["rejected"])

        uplink = gw.status().get("uplink")
        if uplink is not None:  # a joined node: how it talks to the registry now
            transport = GaugeMetricFamily("fieldgate_uplink_transport", "1 for the way the node talks to the "
                                          "registry now: channel (WebSocket) or https-polling (the fallback)",
                                          labels=["transport"])
            for name in ("channel", "https-polling"):
                transport.add_metric([name], 1 if uplink["transport"] == name else 0)
            yield transport
            state = GaugeMetricFamily("fieldgate_uplink_channel_state", "1 for the channel's state", labels=["state"])
            for name in ("connecting", "connected", "unreachable", "refused", "fallback", "off"):
                state.add_metric([name], 1 if uplink["channel"]["state"] == name else 0)
            yield state
            yield CounterMetricFamily("fieldgate_uplink_channel_connects_total", "Times the channel connected",
                                      value=uplink["channel"]["connects"])

    def _process(self) -> Iterator[Metric]:
        process = psutil.Process()
        with process.oneshot():
            cpu = process.cpu_times()
            rss = process.memory_info().rss
        yield CounterMetricFamily("fieldgate_process_cpu_seconds_total", "CPU time of the gateway process",
                                  value=cpu.user + cpu.system)
        yield GaugeMetricFamily("fieldgate_process_resident_memory_bytes", "Resident memory of the gateway process",
                                value=rss)

    def _node(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("fieldgate_node_cpu_seconds_total", "CPU time of the machine, all CPUs",
                                  labels=["mode"])
        for mode, seconds in psutil.cpu_times()._asdict().items():
            cpu.add_metric([mode], seconds)
        yield cpu
        memory = psutil.virtual_memory()
        yield GaugeMetricFamily("fieldgate_node_memory_total_bytes", "Memory of the machine", value=memory.total)
        yield GaugeMetricFamily("fieldgate_node_memory_available_bytes", "Memory available to new processes",
                                value=memory.available)
        disk = psutil.disk_usage(str(self.gateway.data_dir))
        yield GaugeMetricFamily("fieldgate_data_dir_disk_total_bytes", "Size of the data dir's file system",
                                value=disk.total)
        yield GaugeMetricFamily("fieldgate_data_dir_disk_used_bytes", "Used space on the data dir's file system",
                                value=disk.used)
        net = psutil.net_io_counters()
        if net is not None:
            yield CounterMetricFamily("fieldgate_node_network_received_bytes_total", "Bytes received, all NICs",
                                      value=net.bytes_recv)
            yield CounterMetricFamily("fieldgate_node_network_sent_bytes_total", "Bytes sent, all NICs",
                                      value=net.bytes_sent)

    def _devices(self) -> Iterator[Metric]:
        counters = {
            "cycles": CounterMetricFamily("fieldgate_device_poll_cycles_total", "Read cycles", labels=["device"]),
            "read_errors": CounterMetricFamily("fieldgate_device_read_errors_total",
                                               "Failed reads and connections", labels=["device"]),
            "writes": CounterMetricFamily("fieldgate_device_writes_total", "Writes of desired values",
                                          labels=["device"]),
            "write_errors": CounterMetricFamily("fieldgate_device_write_errors_total", "Writes that failed",
                                                labels=["device"]),
            "missed": CounterMetricFamily("fieldgate_device_missed_cycles_total",
                                          "Cycles skipped because the device fell behind", labels=["device"]),
        }
        state = GaugeMetricFamily("fieldgate_device_state", "1 for the device's current state",
                                  labels=["device", "state"])
        lateness = HistogramMetricFamily("fieldgate_device_cycle_lateness_seconds",
                                         "How late read cycles started", labels=["device"])
        twins = self.gateway.twins()
        for device_id in sorted(self.gateway.devices()):
            stats = self.gateway.poll_stats(device_id)
            if stats is None:
                continue
            for attribute, family in counters.items():
                family.add_metric([device_id], getattr(stats, attribute))
            twin = twins.get(device_id)
            for name in DEVICE_STATES:
                state.add_metric([device_id, name], 1 if twin is not None and twin.state == name else 0)
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip((*map(str, LATENESS_BUCKETS), "+Inf"), stats.lateness_counts, strict=True):
                total += count
                buckets.append((bound, total))
            lateness.add_metric([device_id], buckets, sum_value=stats.lateness_sum)
        yield from counters.values()
        yield state
        yield lateness

    def _sinks(self) -> Iterator[Metric]:
        labels = ["outbox", "sink"]
        delivered = CounterMetricFamily("fieldgate_sink_delivered_messages_total", "Messages delivered",
                                        labels=labels)
        failures = CounterMetricFamily("fieldgate_sink_failures_total", "Failed delivery attempts", labels=labels)
        dropped = CounterMetricFamily("fieldgate_sink_dropped_messages_total",
                                      "Messages dropped by the outbox limits", labels=labels)
        depth = GaugeMetricFamily("fieldgate_outbox_messages", "Messages waiting in the outbox", labels=labels)
        oldest = GaugeMetricFamily("fieldgate_outbox_oldest_age_seconds",
                                   "Age of the oldest waiting message (0 when empty)", labels=labels)
        now = time.time()
        for outbox, sink in sorted(self.gateway.sinks().items()):
            names = [outbox, sink["sink"]]
            delivered.add_metric(names, sink["delivered"])
            failures.add_metric(names, sink["failures"])
            dropped.add_metric(names, sink["dropped"])
            waiting = self.outboxes.get(outbox, {})
            depth.add_metric(names, waiting.get("depth", 0))
            created = waiting.get("oldest")
            oldest.add_metric(names, max(now - created, 0.0) if created is not None else 0.0)
        accepted = CounterMetricFamily("fieldgate_route_accepted_messages_total", "Messages a route took",
                                       labels=["route"])
        for runtime in self.gateway.routes.routes.values():
            accepted.add_metric([f"{runtime.namespace}/{runtime.name}"], runtime.accepted)
        yield from (delivered, failures, dropped, depth, oldest, accepted)

    def _tasks(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("fieldgate_task_running", "1 while a background task runs (0: restarting)",
                                    labels=["task"])
        restarts = CounterMetricFamily("fieldgate_task_restarts_total", "Restarts after a failure",
                                       labels=["task"])
        for name, status in sorted(self.gateway.tasks().items()):
            if name.startswith("device "):
                continue  # the device metrics cover those
            running.add_metric([name], 1 if status.state == "running" else 0)
            restarts.add_metric([name], status.restarts)
        yield running
        yield restarts


    def _files(self) -> Iterator[Metric]:
        from gateway.files import COUNTERS

        yield CounterMetricFamily("fieldgate_file_bytes_received_total", "File bytes taken off the link from the "
                                  "registry (partial and corrupted chunks too)", value=COUNTERS["bytes_received"])
        yield CounterMetricFamily("fieldgate_file_bytes_sent_total", "File bytes sent to the registry (chunks "
                                  "tried, cut ones too)", value=COUNTERS["bytes_sent"])
        yield CounterMetricFamily("fieldgate_file_chunks_corrupted_total", "Chunks that did not match their SHA-256",
                                  value=COUNTERS["chunks_corrupted"])
        channel = CounterMetricFamily("fieldgate_file_channel_bytes_total", "File bytes that went over the registry "
                                      "channel (the rest went over HTTPS), by direction", labels=["direction"])
        channel.add_metric(["received"], COUNTERS["channel_bytes_received"])
        channel.add_metric(["sent"], COUNTERS["channel_bytes_sent"])
        yield channel
        files = CounterMetricFamily("fieldgate_files_total", "Files by direction and outcome",
                                    labels=["direction", "outcome"])
        for direction, outcome, key in (("from-registry", "received", "files_received"),
                                        ("from-registry", "refused", "files_refused"),
                                        ("to-registry", "sent", "files_sent"),
                                        ("to-registry", "refused", "files_sent_refused")):
            files.add_metric([direction, outcome], COUNTERS[key])
        yield files

    def _workloads(self) -> Iterator[Metric]:
        """The counters of every app instance the node sampled last (gateway.workloads.figures): as many series as
        instances run now (at most its MAX_INSTANCES), labelled by workload and instance id."""
        labels = ["workload", "workload_instance"]
        cpu = CounterMetricFamily("fieldgate_workload_cpu_seconds_total", "CPU time of an app instance",
                                  labels=labels)
        memory = GaugeMetricFamily("fieldgate_workload_memory_bytes", "Memory of an app instance (its cgroup's "
                                   "working set, or the resident size of its processes)", labels=labels)
        disk_read = CounterMetricFamily("fieldgate_workload_disk_read_bytes_total", "Bytes an app instance read "
                                        "from storage", labels=labels)
        disk_written = CounterMetricFamily("fieldgate_workload_disk_written_bytes_total", "Bytes an app instance "
                                           "wrote to storage", labels=labels)
        received = CounterMetricFamily("fieldgate_workload_network_received_bytes_total", "Bytes an app instance "
                                       "received (its own network namespace only)", labels=labels)
        sent = CounterMetricFamily("fieldgate_workload_network_sent_bytes_total", "Bytes an app instance sent "
                                   "(its own network namespace only)", labels=labels)
        manager = getattr(self.gateway, "workloads", None)
        for figures in sorted(manager.figures.instances.values() if manager is not None else (),
                              key=lambda f: f.instance):
            counters, names = figures.counters, [figures.workload, figures.instance]
            if counters is None:
                continue
            cpu.add_metric(names, counters.cpu_seconds)
            for family, value in ((memory, counters.memory_bytes), (disk_read, counters.disk_read),
                                  (disk_written, counters.disk_written), (received, counters.net_rx),
                                  (sent, counters.net_tx)):
                if value is not None:
                    family.add_metric(names, value)
        yield from (cpu, memory, disk_read, disk_written, received, sent)
        yield from self._pod_containers()

    def _pod_containers(self) -> Iterator[Metric]:
        """Restarts and state of every container of the node's pods (workloads with `containers`)."""
        labels = ["workload", "workload_instance", "container"]
        restarts = CounterMetricFamily("fieldgate_workload_container_restarts", "Restarts of one container of a "
                                       "pod (it alone)", labels=labels)
        running = GaugeMetricFamily("fieldgate_workload_container_running", "1 while one container of a pod runs",
                                    labels=labels)
        manager = getattr(self.gateway, "workloads", None)
        for workload, instance in manager.running_instances() if manager is not None else ():
            handle = instance.handle
            for container in handle.containers() if handle is not None else ():
                names = [workload, instance.id, str(container["name"])]
                restarts.add_metric(names, container["restarts"])
                running.add_metric(names, 1 if container["state"] == "running" else 0)
        yield from (restarts, running)

    def _services(self) -> Iterator[Metric]:
        """The counters of every service port, endpoint and path (local, direct, relay; served: other nodes'
        connections to this node's instances)."""
        mesh = getattr(self.gateway, "services", None)
        if mesh is None:
            return
        labels = ["namespace", "service", "port", "endpoint", "path"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "connections": CounterMetricFamily("fieldgate_service_connections_total", "Connections (UDP: client "
                                               "flows) a service port sent to an endpoint", labels=labels),
            "bytes_in": CounterMetricFamily("fieldgate_service_sent_bytes_total", "Bytes from the clients to an "
                                            "endpoint", labels=labels),
            "bytes_out": CounterMetricFamily("fieldgate_service_received_bytes_total", "Bytes from an endpoint to "
                                             "the clients", labels=labels),
            "errors": CounterMetricFamily("fieldgate_service_errors_total", "Connections to an endpoint that "
                                          "failed", labels=labels),
            "active": GaugeMetricFamily("fieldgate_service_active_connections", "Connections open now",
                                        labels=labels),
        }
        for (namespace, name, port, endpoint, path), counters in sorted(mesh.counters.items()):
            values = counters.as_dict()
            for key, family in families.items():
                family.add_metric([namespace, name, port, endpoint, path], values[key])
        yield from families.values()
        yield GaugeMetricFamily("fieldgate_services", "Services the node serves", value=len(mesh.services))
        yield GaugeMetricFamily("fieldgate_service_container_namespaces", "Containers' network namespaces the "
                                "services are open in", value=len(mesh.namespaces))
        dns = mesh.dns
        if dns is not None:  # since the responder started (a reload that moves it starts a new one)
            for name, help_text, value in (
                    ("queries", "DNS queries the services' responder read", dns.queries),
                    ("answered", "DNS queries answered with records", dns.answered),
                    ("truncated", "DNS answers over UDP cut to their header (the client asks again over TCP)",
                     dns.truncated),
                    ("tcp_refused", "DNS TCP connections refused: too many at once", dns.tcp_refused)):
                yield CounterMetricFamily(f"fieldgate_dns_{name}_total", help_text, value=value)


async def scrape(gateway: GatewayAPI) -> bytes:
    """The metrics text of one gateway now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway, await gateway.store.outboxes.stats()))
    return generate_latest(registry)

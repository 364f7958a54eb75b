"""The node's own resource figures: a NodeSampler measures the machine and the gateway (CPU, memory, disk and network
rates over the time since its previous sample, process RSS, points polled per second, outbox depth). The uplink sends
one sample with every heartbeat (`info.metrics`, kept per minute by the registry), so its rates cover the time
between beats; the gateway also keeps its own samples in memory (LocalHistory: the last 15 min at 10 s, the last 24 h
at 1 min) for the plots of its dashboard."""

from __future__ import annotations

import asyncio
import collections
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from gateway.webkit.plots import Point, resource_plots_html
from gateway.wire import SERIES, Sample

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

MIN_RATE_WINDOW = 1.0  # seconds between the counters a rate is taken over, at least
MINUTE = 60
WINDOW = 24 * 3600  # how long the dashboard keeps samples
FINE_STEP = 10.0  # the dashboard's recent samples
FINE_WINDOW = 900


@dataclass(frozen=True)
class _Counters:
    at: float
    cpu_busy: float
    cpu_total: float
    disk_read: int | None
    disk_written: int | None
    net_rx: int
    net_tx: int
    points: float


class NodeSampler:
    """The node's resource figures; rates (CPU, disk, network, points) are over the time since the previous call.

    Each sampler keeps its own previous counters, so the uplink and the dashboard do not disturb each other's
    intervals (psutil.cpu_percent(None) would: it keeps one previous reading per process)."""

    def __init__(self, data_dir: Path, gateway: GatewayAPI | None = None) -> None:
        self.data_dir = data_dir
        self.gateway = gateway
        self.process = psutil.Process(os.getpid())
        self._previous = self._counters()

    def _counters(self) -> _Counters:
        cpu = psutil.cpu_times()
        idle = cpu.idle + getattr(cpu, "iowait", 0.0)
        total = sum(cpu)
        disk = psutil.disk_io_counters()
        rx = tx = 0
        for nic, counters in psutil.net_io_counters(pernic=True).items():
            if not nic.startswith("lo"):  # loopback traffic (the local broker, the web UI) never leaves the box
                rx += counters.bytes_recv
                tx += counters.bytes_sent
        return _Counters(time.monotonic(), total - idle, total, disk.read_bytes if disk else None,
                         disk.write_bytes if disk else None, rx, tx, self._points())

    def _points(self) -> float:
        """Values read so far by every poller: its cycles times the properties a cycle reads (one schedule: exact;
        several: their mean weighted by how often each is due)."""
        return self.gateway.points_read() if self.gateway is not None else 0.0

    def sample(self) -> Sample:
        now, before = self._counters(), self._previous
        elapsed = now.at - before.at
        if elapsed >= MIN_RATE_WINDOW:  # a rate over a few ms (one poll cycle more or less) is noise, not a rate
            self._previous = now

        def rate(new: float | None, old: float | None) -> float | None:
            if new is None or old is None or elapsed < MIN_RATE_WINDOW:
                return None
            return round(max(new - old, 0) / elapsed, 1)  # a counter that went back (a NIC gone) counts as 0

        cpu_total = now.cpu_total - before.cpu_total
        memory = psutil.virtual_memory()
        try:
            disk_percent: float | None = psutil.disk_usage(str(self.data_dir)).percent
        except OSError:
            disk_percent = None
        outbox = sum(self.gateway.store.outboxes.depth.values()) if self.gateway is not None else None
        return {
            "cpu_percent": round(min(max((now.cpu_busy - before.cpu_busy) / cpu_total * 100, 0.0), 100.0), 1)
            if cpu_total > 0 else None,
            "memory_used": float(memory.total - memory.available),
            "memory_percent": memory.percent,
            "disk_percent": disk_percent,
            "disk_read_bps": rate(now.disk_read, before.disk_read),
            "disk_write_bps": rate(now.disk_written, before.disk_written),
            "net_rx_bps": rate(now.net_rx, before.net_rx),
            "net_tx_bps": rate(now.net_tx, before.net_tx),
            "process_rss": float(self.process.memory_info().rss),
            "points_per_s": rate(now.points, before.points) if self.gateway is not None else None,
            "outbox_depth": float(outbox) if outbox is not None else None,
        }


# --- the node's own history (dashboard) ---------------------------------------------------------------------------


Row = tuple[float | None, ...]  # a sample's values in the order of SERIES (a day of minutes: about 1 MB)


class LocalHistory:
    """Samples in memory: every sample of the last 15 min, and per-minute means of the last 24 h."""

    def __init__(self) -> None:
        self.fine: collections.deque[tuple[float, Row]] = collections.deque(maxlen=int(FINE_WINDOW / FINE_STEP))
        self.minutes: collections.deque[tuple[float, Row]] = collections.deque(maxlen=WINDOW // MINUTE)
        self._minute = -1
        self._sums = [0.0] * len(SERIES)
        self._counts = [0] * len(SERIES)

    def add(self, ts: float, sample: Sample) -> None:
        row = tuple(sample.get(name) for name in SERIES)
        self.fine.append((ts, row))
        minute = int(ts // MINUTE)
        if minute != self._minute:
            self._close_minute()
            self._minute = minute
        for i, value in enumerate(row):
            if value is not None:
                self._sums[i] += value
                self._counts[i] += 1

    def _current(self) -> tuple[float, Row] | None:
        if self._minute < 0:
            return None
        return self._minute * MINUTE, tuple(total / count if count else None
                                            for total, count in zip(self._sums, self._counts, strict=True))

    def _close_minute(self) -> None:
        current = self._current()
        if current is not None:
            self.minutes.append(current)
        self._sums, self._counts = [0.0] * len(SERIES), [0] * len(SERIES)

    def series(self, window: float, now: float) -> tuple[float, dict[str, list[Point]]]:
        """(step, {series: [(time, value)]}) of the last `window` seconds, the running minute included."""
        if window <= FINE_WINDOW:
            step, rows = FINE_STEP, list(self.fine)
        else:
            current = self._current()
            step, rows = float(MINUTE), [*self.minutes, *([current] if current else [])]
        start = now - window - step
        return step, {name: [(ts, row[i]) for ts, row in rows if ts >= start] for i, name in enumerate(SERIES)}


class NodeMonitor:
    """Samples the gateway's node every 10 s into a LocalHistory (the dashboard's plots)."""

    def __init__(self, gateway: GatewayAPI, interval: float = FINE_STEP) -> None:
        self.sampler = NodeSampler(gateway.data_dir, gateway)
        self.history = LocalHistory()
        self.interval = interval

    def sample_now(self) -> Sample:
        sample = self.sampler.sample()
        self.history.add(time.time(), sample)
        return sample

    async def run(self) -> None:
        await asyncio.sleep(min(2.0, self.interval))  # a first point soon after the start
        while True:
            self.sample_now()
            await asyncio.sleep(self.interval)


_monitors: weakref.WeakKeyDictionary[GatewayAPI, NodeMonitor] = weakref.WeakKeyDictionary()


def start_local_monitor(gateway: GatewayAPI) -> NodeMonitor:
    """Start sampling a gateway's node (a supervised task, `node-monitor`)."""
    monitor = _monitors[gateway] = NodeMonitor(gateway)
    gateway.start_task("node-monitor", monitor.run)
    return monitor


def local_monitor(gateway: GatewayAPI) -> NodeMonitor | None:
    return _monitors.get(gateway)


WINDOWS = {"15m": 900.0, "1h": 3600.0, "24h": float(WINDOW)}
PLOT_SOURCE = "/plots/node"  # the JSON the dashboard's script redraws the plots from (gateway.web.pages.plots)


def local_plots_html(gateway: GatewayAPI, window: str = "1h") -> str:
    """The dashboard's plots of this node over `window` (15m, 1h or 24h); empty when nothing samples it."""
    monitor = local_monitor(gateway)
    if monitor is None:
        return ""
    window = window if window in WINDOWS else "1h"
    seconds = WINDOWS[window]
    now = time.time()
    step, series = monitor.history.series(seconds, now)
    # the dashboard's Host card says how much memory is used now: the plot's title names no second figure (a mean of
    # the running minute, which differs from it)
    series.pop("memory_used", None)
    return resource_plots_html(series, start=now - seconds, end=now, step=step, source=PLOT_SOURCE, window=window,
                               window_links="plots")


def local_samples(gateway: GatewayAPI, window: str) -> dict[str, object] | None:
    """This node's samples over `window` (15m, 1h or 24h) as the plots' JSON: step, times, one list per series;
    None when nothing samples the node."""
    monitor = local_monitor(gateway)
    if monitor is None:
        return None
    now = time.time()
    step, series = monitor.history.series(WINDOWS[window], now)
    times = [ts for ts, _ in next(iter(series.values()), [])]
    return {"step": step, "since": now - WINDOWS[window], "until": now, "times": times,
            "series": {name: [value for _, value in points] for name, points in series.items()}}

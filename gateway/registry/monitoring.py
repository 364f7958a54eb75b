"""Node monitoring: resource figures sampled on the node, kept per minute by the registry, drawn as SVG plots.

On the node, a NodeSampler measures the machine and the gateway (CPU, memory, disk and network rates over the time
since its previous sample, process RSS, points polled per second, outbox depth). The uplink sends one sample with
every heartbeat (`info.metrics`), so its rates cover the time between beats; the gateway also keeps its own samples
in memory (LocalHistory: the last 10 min at 10 s, the last 24 h at 1 min) for the plots of the dashboard.

The registry adds each heartbeat's sample to the node's bucket of that minute (table `node_metrics`: a sum and a
count per series, so a minute shows the mean of its beats), drops the buckets older than 24 h, answers
`GET /api/v1/nodes/{node}/metrics` and draws the same plots for its node pages (`node_plots_html`).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from litestar import Request, get
from litestar.params import FromPath

from gateway.errors import ConfigError
from gateway.webkit.plots import COLORS, Line, Point, Unit, format_value, line_plot
from gateway.wire import SERIES, Sample, clean_sample

if TYPE_CHECKING:
    from gateway.registry.db import Statement
    from gateway.registry.store import RegistryStore
    from gateway.runtime import Gateway

AnyRequest = Request[Any, Any, Any]
MIN_RATE_WINDOW = 1.0  # seconds between the counters a rate is taken over, at least
MINUTE = 60
WINDOW = 24 * 3600  # how long the registry and the dashboard keep samples
FINE_STEP = 10.0  # the dashboard's recent samples
FINE_WINDOW = 600


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

    def __init__(self, data_dir: Path, gateway: Gateway | None = None) -> None:
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
        if self.gateway is None:
            return 0.0
        total = 0.0
        for poller in self.gateway.pollers.values():
            schedules = poller.schedules
            if not schedules:
                continue
            rates = [1 / max(s.interval, 1e-3) for s in schedules]
            per_cycle = sum(len(s.props) * r for s, r in zip(schedules, rates, strict=True)) / sum(rates)
            total += poller.stats.cycles * per_cycle
        return total

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
        outbox = sum(self.gateway.store.outbox_depth.values()) if self.gateway is not None else None
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
    """Samples in memory: every sample of the last 10 min, and per-minute means of the last 24 h."""

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

    def __init__(self, gateway: Gateway, interval: float = FINE_STEP) -> None:
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


_monitors: weakref.WeakKeyDictionary[Gateway, NodeMonitor] = weakref.WeakKeyDictionary()


def start_local_monitor(gateway: Gateway) -> NodeMonitor:
    """Start sampling a gateway's node (a supervised task, `node-monitor`)."""
    monitor = _monitors[gateway] = NodeMonitor(gateway)
    gateway.supervisor.start("node-monitor", monitor.run)
    return monitor


def local_monitor(gateway: Gateway) -> NodeMonitor | None:
    return _monitors.get(gateway)


# --- plots -----------------------------------------------------------------------------------------------------


def resource_plots_html(series: dict[str, list[Point]], *, start: float, end: float, step: float) -> str:
    """The CPU, memory, disk and network plots of one node, side by side."""

    def plot(title: str, unit: Unit, names: list[tuple[str, str]], y_max: float | None = None,
             note: str = "") -> str:
        lines = [Line(label, series.get(name, []), COLORS[i]) for i, (name, label) in enumerate(names)]
        return line_plot(title, lines, start=start, end=end, step=step, unit=unit, y_max=y_max, note=note)

    def latest(name: str) -> float | None:
        return next((value for _, value in reversed(series.get(name, [])) if value is not None), None)

    disk = latest("disk_percent")
    used = latest("memory_used")
    plots = [
        plot("CPU", "percent", [("cpu_percent", "cpu")], y_max=100),
        plot("Memory", "percent", [("memory_percent", "used")], y_max=100,
             note=format_value(used, "bytes") if used is not None else ""),
        plot("Disk I/O", "bytes_per_s", [("disk_read_bps", "read"), ("disk_write_bps", "write")],
             note=f"{format_value(disk, 'percent')} full" if disk is not None else ""),
        plot("Network", "bytes_per_s", [("net_rx_bps", "rx"), ("net_tx_bps", "tx")]),
    ]
    # the plots have a fixed size and flow side by side: no style attribute, which the pages' CSP would refuse
    return '<div class="node-plots">' + " ".join(plots) + "</div>"


WINDOWS = {"10m": 600.0, "1h": 3600.0, "24h": float(WINDOW)}


def local_plots_html(gateway: Gateway, window: str = "1h") -> str:
    """The dashboard's plots of this node over `window` (10m, 1h or 24h); empty when nothing samples it."""
    monitor = local_monitor(gateway)
    if monitor is None:
        return ""
    seconds = WINDOWS.get(window, WINDOWS["1h"])
    now = time.time()
    step, series = monitor.history.series(seconds, now)
    return resource_plots_html(series, start=now - seconds, end=now, step=step)


# --- the registry's per-minute samples ------------------------------------------------------------------------


_ADD_SAMPLE = (
    f"INSERT INTO node_metrics (node, minute, beats, {', '.join(f'{n}_sum, {n}_n' for n in SERIES)}) "
    f"VALUES (?, ?, 1, {', '.join('?' * (2 * len(SERIES)))}) ON CONFLICT (node, minute) DO UPDATE SET "
    "beats = node_metrics.beats + 1, "
    + ", ".join(f"{n}_sum = node_metrics.{n}_sum + excluded.{n}_sum, {n}_n = node_metrics.{n}_n + excluded.{n}_n"
                for n in SERIES))


def sample_statements(node: str, raw: Any, now: float) -> list[Statement]:
    """The statements adding a heartbeat's sample to the node's bucket of this minute and dropping old buckets."""
    sample = clean_sample(raw)
    if not sample:
        return []
    minute = int(now // MINUTE)
    values: list[Any] = [node, minute]
    for name in SERIES:
        value = sample.get(name)
        values += [value if value is not None else 0.0, 0 if value is None else 1]
    return [(_ADD_SAMPLE, values),
            ("DELETE FROM node_metrics WHERE node=? AND minute<?", (node, minute - WINDOW // MINUTE))]


async def node_samples(store: RegistryStore, node: str, since: float,
                       series: tuple[str, ...] = SERIES) -> dict[str, Any]:
    """A node's per-minute means since `since` (at most the last 24 h): times and one list of values per series."""
    since = max(since, time.time() - WINDOW)
    columns = ", ".join(f"{name}_sum, {name}_n" for name in series)
    rows = await store.database.rows(
        f"SELECT minute, {columns} FROM node_metrics WHERE node=? AND minute>=? ORDER BY minute",
        node, int(since // MINUTE))
    values: dict[str, list[float | None]] = {name: [] for name in series}
    for row in rows:
        for i, name in enumerate(series):
            total, count = row[1 + 2 * i], row[2 + 2 * i]
            values[name].append(round(total / count, 3) if count else None)
    return {"node": node, "step": MINUTE, "times": [row[0] * MINUTE for row in rows], "series": values}


async def node_plots_html(store: RegistryStore, node: str, window: float = WINDOW) -> str:
    """The CPU, memory, disk and network plots of a node over the last `window` seconds (inline SVG)."""
    now = time.time()
    samples = await node_samples(store, node, now - window)
    series = {name: list(zip(samples["times"], values, strict=True)) for name, values in samples["series"].items()}
    return resource_plots_html(series, start=now - window, end=now, step=MINUTE)


def _since(raw: str | None) -> float:
    """`?since=`: a unix time in seconds, or a duration back from now (`90s`, `15m`, `6h`); default 24 h ago."""
    from gateway.resources.durations import Duration

    now = time.time()
    if not raw:
        return now - WINDOW
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return now - float(Duration.parse(raw))
    except ValueError as exc:
        raise ConfigError(f"?since={raw}: expected a unix time or a duration such as 15m or 6h ({exc})") from None


def _series(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return SERIES
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in SERIES]
    if unknown or not names:
        raise ConfigError(f"?series={raw}: unknown {', '.join(unknown) or 'series'}; expected some of "
                          f"{', '.join(SERIES)}")
    return names


@get("/api/v1/nodes/{name:str}/metrics", summary="A node's resource samples, one mean per minute of the last 24 h "
     "(?since=unix time or 15m, ?series=a,b; 404 outside the token's scope)")
async def node_metrics(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    from gateway.registry import access
    from gateway.registry.auth import store_of

    caller = await access.require_caller(request, "viewer")
    store = store_of(request)
    since = _since(request.query_params.get("since"))
    series = _series(request.query_params.get("series"))
    await access.check_node_in_scope(store, caller, name)
    return await node_samples(store, name, since, series)


ROUTE_HANDLERS = [node_metrics]

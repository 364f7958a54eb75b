"""Node monitoring at the registry: the resource figures a node samples (gateway.ops.sampler) and sends with every
heartbeat (`info.metrics`), kept per minute and drawn as SVG plots.

The registry adds each heartbeat's sample to the node's bucket of that minute (table `node_metrics`: a sum and a
count per series, so a minute shows the mean of its beats), drops the buckets older than 24 h, answers
`GET /api/v1/nodes/{node}/metrics` and draws the same plots for its node pages (`node_plots_html`).

The same for the app instances a node reports (`figures` of the heartbeat, gateway.workloads.figures on the node):
a bucket per node, minute, workload and instance (`app_metrics`), answered at
`GET /api/v1/workloads/{namespace}/{name}/metrics` and `GET /api/v1/nodes/{node}/apps/metrics` and drawn on the
app and node pages (`app_plots_html`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from litestar import Request, get
from litestar.params import FromPath

from gateway.errors import ConfigError, NotFound
from gateway.registry.store.samples import MINUTE, WINDOW
from gateway.webkit.plots import app_plots_html as draw_app_plots
from gateway.webkit.plots import app_series_name, resource_plots_html
from gateway.wire import APP_SERIES, SERIES

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

AnyRequest = Request[Any, Any, Any]
WINDOWS: Mapping[str, float] = {"15m": 900.0, "1h": 3600.0, "24h": float(WINDOW)}  # the plots' windows by name


async def node_samples(store: RegistryStore, node: str, since: float,
                       series: tuple[str, ...] = SERIES) -> dict[str, Any]:
    """A node's per-minute means since `since` (at most the last 24 h): times and one list of values per series."""
    since = max(since, time.time() - WINDOW)
    rows = await store.samples.minutes(node, int(since // MINUTE), series)
    values: dict[str, list[float | None]] = {name: [] for name in series}
    for row in rows:
        for i, name in enumerate(series):
            total, count = row[1 + 2 * i], row[2 + 2 * i]
            values[name].append(round(total / count, 3) if count else None)
    return {"node": node, "step": MINUTE, "times": [row[0] * MINUTE for row in rows], "series": values}


async def node_plots_html(store: RegistryStore, node: str, window: str = "24h",
                          windows: Mapping[str, float] = WINDOWS) -> str:
    """The CPU, memory, disk and network plots of a node over the last `window` (a name in `windows`, which gives
    its seconds) as inline SVG, which the page's script redraws from `/nodes/{node}/metrics`
    (gateway.registry.live); the window selector reloads the page with `?window=`."""
    seconds = windows[window]
    now = time.time()
    samples = await node_samples(store, node, now - seconds)
    series = {name: list(zip(samples["times"], values, strict=True)) for name, values in samples["series"].items()}
    return resource_plots_html(series, start=now - seconds, end=now, step=MINUTE,
                               source=f"/nodes/{quote(node, safe='')}/metrics", window=window,
                               window_links="window", windows=tuple(windows))


async def app_samples(store: RegistryStore, since: float, *, node: str | None = None,
                      workload: str | None = None, nodes: set[str] | None = None) -> dict[str, Any]:
    """The per-minute means since `since` (at most the last 24 h) of the app instances on one node or of one
    workload (only on `nodes` when given): the instances, times, and one list of values per figure and instance
    (named `<figure>@<node>/<instance>`)."""
    since = max(since, time.time() - WINDOW)
    rows = await store.samples.app_minutes(int(since // MINUTE), node=node, workload=workload)
    minutes = sorted({row[3] for row in rows})
    column = {minute: i for i, minute in enumerate(minutes)}
    instances: dict[str, dict[str, Any]] = {}
    series: dict[str, list[float | None]] = {}
    for row in rows:
        if nodes is not None and row[0] not in nodes:
            continue
        key = f"{row[0]}/{row[2]}"
        seen = instances.setdefault(key, {"key": key, "node": row[0], "workload": row[1], "instance": row[2]})
        seen["last"] = row[3] * MINUTE
        for i, name in enumerate(APP_SERIES):
            total, count = row[4 + 2 * i], row[5 + 2 * i]
            values = series.setdefault(app_series_name(name, key), [None] * len(minutes))
            values[column[row[3]]] = round(total / count, 3) if count else None
    latest = {}
    for key, seen in instances.items():
        index = column[int(seen["last"] // MINUTE)]
        latest[key] = {name: series[app_series_name(name, key)][index] for name in APP_SERIES}
    ordered = sorted(instances.values(), key=lambda i: (-i["last"], i["key"]))
    return {"step": MINUTE, "times": [minute * MINUTE for minute in minutes], "series": series,
            "instances": [{**i, "latest": latest[i["key"]]} for i in ordered]}


async def app_plots_html(store: RegistryStore, window: str, *, source: str, node: str | None = None,
                         workload: str | None = None, nodes: set[str] | None = None,
                         windows: Mapping[str, float] = WINDOWS) -> tuple[str, list[dict[str, Any]]]:
    """The CPU, memory, disk and network plots of the app instances on a node or of a workload over `window`, a
    line per instance (the most recently reported first), which the page's script redraws from `source`; and the
    instances with their latest minute's figures."""
    seconds = windows[window]
    now = time.time()
    samples = await app_samples(store, now - seconds, node=node, workload=workload, nodes=nodes)
    series = {name: list(zip(samples["times"], values, strict=True)) for name, values in samples["series"].items()}
    labels = [(i["key"], i["instance"] if node is not None else i["key"]) for i in samples["instances"]]
    html = draw_app_plots(series, labels, start=now - seconds, end=now, step=MINUTE, source=source, window=window,
                          window_links="window", windows=tuple(windows)) if labels else ""
    return html, samples["instances"]


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

    caller = await access.require_caller(request, "nodes.read")
    store = store_of(request)
    since = _since(request.query_params.get("since"))
    series = _series(request.query_params.get("series"))
    await access.check_node_in_scope(store, caller, name)
    return await node_samples(store, name, since, series)


@get("/api/v1/nodes/{name:str}/apps/metrics", summary="The resources of a node's app instances, one mean per minute "
     "of the last 24 h: CPU in % of a core, memory in bytes, disk and network in bytes/s (?since=; 404 outside the "
     "token's scope)")
async def node_app_metrics(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    from gateway.registry import access
    from gateway.registry.auth import store_of

    caller = await access.require_caller(request, "apps.read")
    store = store_of(request)
    since = _since(request.query_params.get("since"))
    await access.check_node_in_scope(store, caller, name)
    return {"node": name, **await app_samples(store, since, node=name)}


@get("/api/v1/workloads/{namespace:str}/{name:str}/metrics", summary="The resources of a workload's instances on "
     "the nodes the caller sees, one mean per minute of the last 24 h: CPU in % of a core, memory in bytes, disk "
     "and network in bytes/s (?since=, ?node=)")
async def workload_app_metrics(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> dict[str, Any]:
    from gateway.registry import access
    from gateway.registry.auth import store_of

    caller = await access.require_caller(request, "apps.read")
    store = store_of(request)
    since = _since(request.query_params.get("since"))
    node = request.query_params.get("node") or None
    nodes = await workload_nodes(store, caller, namespace, name)
    return {"workload": f"{namespace}/{name}",
            **await app_samples(store, since, workload=f"{namespace}/{name}", node=node, nodes=nodes)}


async def workload_nodes(store: RegistryStore, caller: Any, namespace: str, name: str) -> set[str]:
    """The nodes the caller sees that the registry placed a workload on; NotFound when there are none."""
    from gateway.registry.workloads import workload_views

    nodes = {str(v["node"]) for v in await workload_views(store, caller)
             if v["node"] and v["namespace"] == namespace and v["name"] == name}
    if not nodes:
        raise NotFound(f"no workload {namespace}/{name}")
    return nodes


ROUTE_HANDLERS = [node_metrics, node_app_metrics, workload_app_metrics]

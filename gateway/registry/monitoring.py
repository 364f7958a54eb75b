"""Node monitoring at the registry: the resource figures a node samples (gateway.ops.sampler) and sends with every
heartbeat (`info.metrics`), kept per minute and drawn as SVG plots.

The registry adds each heartbeat's sample to the node's bucket of that minute (table `node_metrics`: a sum and a
count per series, so a minute shows the mean of its beats), drops the buckets older than 24 h, answers
`GET /api/v1/nodes/{node}/metrics` and draws the same plots for its node pages (`node_plots_html`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from litestar import Request, get
from litestar.params import FromPath

from gateway.errors import ConfigError
from gateway.registry.store.samples import MINUTE, WINDOW
from gateway.webkit.plots import resource_plots_html
from gateway.wire import SERIES

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


ROUTE_HANDLERS = [node_metrics]

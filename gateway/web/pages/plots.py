"""The JSON the node UI's plots are drawn from (webkit/static/plot.js): this node's resource samples and the figures
of an app's instances. A device property's history is gateway.web.pages.devices.device_plot."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from litestar import get
from litestar.params import FromPath, FromQuery

from gateway.errors import NotFound, ValueRejected
from gateway.ops.sampler import WINDOWS, local_samples
from gateway.web.pages.common import AnyRequest, gateway_of
from gateway.web.security import requires
from gateway.webkit.plots import app_plots_html

if TYPE_CHECKING:
    from gateway.api import GatewayAPI


@get("/plots/node", guards=[requires("viewer")], include_in_schema=False,
     summary="This node's resource samples for the dashboard's plots: times and one list per series")
async def node_plot(request: AnyRequest, window: FromQuery[str] = "1h") -> dict[str, Any]:
    if window not in WINDOWS:
        raise ValueRejected(f"window: one of {', '.join(WINDOWS)}")
    samples = local_samples(gateway_of(request), window)
    if samples is None:
        raise NotFound("nothing samples this node's resources")
    return samples


APP_WINDOWS = {"15m": 900.0, "1h": 3600.0}  # the node keeps an hour of every instance's figures


def app_plots(gateway: GatewayAPI, workload: str, window: str) -> str:
    """The CPU, memory, disk and network plots of an app's instances over `window` (gateway.webkit.plots)."""
    window = window if window in APP_WINDOWS else "15m"
    now = time.time()
    figures = gateway.workloads.figures
    samples = figures.series(workload, now - APP_WINDOWS[window])
    if not samples["instances"]:
        return ""
    times = samples["times"]
    series = {name: list(zip(times, values, strict=True)) for name, values in samples["series"].items()}
    instances = [(instance, instance) for instance in samples["instances"]]
    return app_plots_html(series, instances, start=now - APP_WINDOWS[window], end=now, step=figures.interval,
                          source=f"/plots/workloads/{workload}", window=window, windows=tuple(APP_WINDOWS))


@get("/plots/workloads/{namespace:str}/{name:str}", guards=[requires("viewer")], include_in_schema=False,
     summary="The figures of an app's instances for its page's plots: times and one list per figure and instance")
async def workload_plot(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                        window: FromQuery[str] = "15m") -> dict[str, Any]:
    if window not in APP_WINDOWS:
        raise ValueRejected(f"window: one of {', '.join(APP_WINDOWS)}")
    gateway = gateway_of(request)
    gateway.workloads.runner(namespace, name)  # NotFound for a workload the node does not have
    now = time.time()
    since = now - APP_WINDOWS[window]
    return {**gateway.workloads.figures.series(f"{namespace}/{name}", since), "since": since, "until": now}


PAGES = [node_plot, workload_plot]

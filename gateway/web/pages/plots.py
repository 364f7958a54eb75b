"""The JSON the node UI's plots are drawn from (webkit/static/plot.js): this node's resource samples. A device
property's history is gateway.web.pages.devices.device_plot."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.params import FromQuery

from gateway.errors import NotFound, ValueRejected
from gateway.ops.sampler import WINDOWS, local_samples
from gateway.web.pages.common import AnyRequest, gateway_of
from gateway.web.security import requires


@get("/plots/node", guards=[requires("viewer")], include_in_schema=False,
     summary="This node's resource samples for the dashboard's plots: times and one list per series")
async def node_plot(request: AnyRequest, window: FromQuery[str] = "1h") -> dict[str, Any]:
    if window not in WINDOWS:
        raise ValueRejected(f"window: one of {', '.join(WINDOWS)}")
    samples = local_samples(gateway_of(request), window)
    if samples is None:
        raise NotFound("nothing samples this node's resources")
    return samples


PAGES = [node_plot]

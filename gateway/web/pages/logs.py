"""The Logs page: the recent log with level, device and text filters; it follows new lines when scripts run."""

from __future__ import annotations

from urllib.parse import urlencode

from litestar import get
from litestar.response import Template

from gateway.errors import ConfigError
from gateway.logs import LEVELS, LogPage, LogQuery, log_ring
from gateway.web.pages.common import AnyRequest, gateway_of, render
from gateway.web.security import requires

FILTERS = ("level", "device", "contains", "logger", "route", "sink", "since", "limit")
PAGE_LINES = "100"  # the newest lines a page shows unless ?limit= says otherwise; scripts add newer ones


@get("/logs", guards=[requires("viewer")], summary="Recent log lines: filter by level, device and text",
     include_in_schema=False)
async def logs_page(request: AnyRequest) -> Template:
    filters = {key: value for key in FILTERS if (value := request.query_params.get(key, "").strip())}
    problem, status_code = "", 200
    try:
        page = log_ring().query(LogQuery.parse({"limit": PAGE_LINES, **filters}))
    except ConfigError as exc:
        problem, status_code = str(exc), 400
        page = LogPage(records=[], cursor=0)
    return render(request, "logs.html", status_code=status_code, records=page.records, cursor=page.cursor,
                  filters=filters, query=urlencode({k: v for k, v in filters.items() if k != "since"}),
                  levels=list(LEVELS), devices=sorted(gateway_of(request).config.devices), problem=problem)

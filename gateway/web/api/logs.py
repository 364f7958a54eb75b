"""The recent log: GET /api/v1/logs with filters, newest last, and a cursor to follow new records."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import QueryParameter

from gateway.logs import LogPage, LogQuery, log_ring
from gateway.web.security import requires


@get("/api/v1/logs", guards=[requires("viewer")], tags=["system"],
     summary="Recent log records, oldest first; follow with ?after=<cursor>")
async def logs(
    request: Request[Any, Any, Any],
    level: Annotated[str | None, QueryParameter(description="minimum level: debug, info, warning, error, "
                                                            "critical")] = None,
    device: Annotated[str | None, QueryParameter(description="a device id (ns/name), or a name in any "
                                                             "namespace")] = None,
    route: Annotated[str | None, QueryParameter(description="a route (ns/name, or a name)")] = None,
    sink: Annotated[str | None, QueryParameter(description="a sink's outbox, e.g. route:default/up")] = None,
    logger: Annotated[str | None, QueryParameter(description="a logger name or its prefix")] = None,
    contains: Annotated[str | None, QueryParameter(description="text in the message or traceback, any "
                                                               "case")] = None,
    since: Annotated[str | None, QueryParameter(description="an ISO 8601 time, unix seconds, or a duration "
                                                            "ago such as 15m")] = None,
    after: Annotated[str | None, QueryParameter(description="only records after this id: the cursor of "
                                                            "an earlier answer")] = None,
    limit: Annotated[str | None, QueryParameter(description="at most this many records (1-5000, default "
                                                            "200)")] = None,
) -> LogPage:
    """Filters come from the query string as given, so a bad value gets a 400 that names it."""
    return log_ring().query(LogQuery.parse({key: value for key, value in request.query_params.items()}))

"""The audit log (admins): every change, who made it, in which scope and how it ended."""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from gateway.registry import access
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, page, show, store_of


@get("/audit", summary="The audit log", **page("admin"))
async def audit_page(request: AnyRequest) -> Template:
    return show(request, "audit.html", entries=await access.audit_entries(store_of(request), caller_of(request),
                                                                          limit=200))


ROUTE_HANDLERS = [audit_page]

"""The registry's pages: server-rendered HTML for registry users (login, session cookie, CSRF on every form), one module
per area: the overview, nodes, joining nodes, groups, devices, models and devices applied at the registry, workloads,
apps (workload and batch workload forms, config items, secrets), endpoints and routes, upgrade tasks, files both ways
and the audit log, roles. Every page names the permissions of which a user's role needs one (`page(permission)`) and
shows only what lies in the user's scope; every change is audited. The layout, login, error page, styles and sessions
are the web kit's (`gateway.webkit`), shared with the node's UI."""

from __future__ import annotations

from gateway.registry.pages import (
    admin,
    apps,
    configs,
    devices,
    documents,
    files,
    groups,
    join,
    login,
    nodes,
    overview,
    roles,
    routes,
    services,
    upgrades,
    workloads,
)
from gateway.registry.pages.common import (
    EXCEPTION_HANDLERS,
    PAGE_PERMISSIONS,
    STATIC,
    TEMPLATES,
    error_page,
    initial_state,
    is_page_path,
    session_caller,
)

ROUTE_HANDLERS = [*login.ROUTE_HANDLERS, *overview.ROUTE_HANDLERS, *nodes.ROUTE_HANDLERS, *join.ROUTE_HANDLERS,
                  *groups.ROUTE_HANDLERS, *devices.ROUTE_HANDLERS, *documents.ROUTE_HANDLERS,
                  *workloads.ROUTE_HANDLERS, *apps.ROUTE_HANDLERS, *configs.ROUTE_HANDLERS, *upgrades.ROUTE_HANDLERS,
                  *routes.ROUTE_HANDLERS, *files.ROUTE_HANDLERS, *admin.ROUTE_HANDLERS,
                  *roles.ROUTE_HANDLERS, *services.ROUTE_HANDLERS]

__all__ = ["EXCEPTION_HANDLERS", "PAGE_PERMISSIONS", "ROUTE_HANDLERS", "STATIC", "TEMPLATES", "error_page",
           "initial_state", "is_page_path", "session_caller"]

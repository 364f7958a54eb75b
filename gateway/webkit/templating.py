"""The Jinja environment of both web apps: each app's own templates first, then the shared layout, login, error
page and macros of `gateway/webkit/templates`; the filters their pages use; the static assets they share (served by
gateway.webkit.assets, asked for by versioned URLs: `{{ static_url("app.css") }}`)."""

from __future__ import annotations

import datetime as dt
import time
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.router import Router
from litestar.template.config import TemplateConfig

from gateway.webkit.assets import assets_of, static_router
from gateway.webkit.plots import format_value as plot_value
from gateway.webkit.units import display_unit, reading_with_unit

WEBKIT = Path(__file__).resolve().parent
TEMPLATES = WEBKIT / "templates"
STATIC = WEBKIT / "static"


def format_ts(ts: float | None, *, utc: bool = False) -> str:
    """`2024-05-01 12:00:00` in the box's local time, or with `utc` in UTC and saying so; an en dash when unset."""
    if not ts:
        return "\u2013"
    if utc:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def format_ago(ts: float | None) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`; `never` when unset."""
    if not ts:
        return "never"
    seconds = max(time.time() - ts, 0)
    for limit, unit, size in ((90, "s", 1), (5400, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def format_value(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_bytes(count: float | None) -> str:
    """`512 B`, `1.5 MiB`, `23 GiB`: binary units, named as such, as the plots name them."""
    return plot_value(count, "bytes")


# One colour per meaning in both UIs, whatever named the state: green up or done, amber on its way or degraded, red
# failed or gone, grey not known yet (`.badge.online`, `.unhealthy`, `.offline`, `.unknown` in app.css).
BADGES = {
    **dict.fromkeys(("online", "healthy", "running", "ready", "completed", "in sync", "applied", "succeeded", "valid",
                     "active", "current", "ok"), "online"),
    **dict.fromkeys(("offline", "failed", "stopped", "rejected", "refused", "revoked", "oom", "lost", "rolled-back",
                     "rollback-failed", "expired", "cancelled", "error"), "offline"),
    **dict.fromkeys(("unknown", "joined", "not-placed", "used up", "skipped", "none"), "unknown"),
}


def badge_class(state: str | None) -> str:
    """The badge colour class of a state of a device, node, workload, desired value, token or task."""
    return BADGES.get(str(state or "unknown"), "unhealthy")


def environment(app_templates: Path, *, utc: bool = False, app_static: tuple[Path, ...] = ()) -> Environment:
    """An app's templates over the shared ones; a shared one stays reachable as `webkit/<name>` when the app
    has its own of the same name. `utc` shows times in UTC (a server far from its users) instead of local time;
    `app_static` are the app's own asset directories, for `static_url`."""
    shared = FileSystemLoader(TEMPLATES)
    loader = ChoiceLoader([FileSystemLoader(app_templates), shared, PrefixLoader({"webkit": shared})])
    env = Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ts=partial(format_ts, utc=utc), ago=format_ago, value=format_value, bytes=format_bytes,
                       badge=badge_class, unit=display_unit, reading=reading_with_unit,
                       figure=plot_value)
    env.globals["static_url"] = assets_of((*app_static, STATIC)).url
    return env


def template_config(app_templates: Path, *, utc: bool = False,
                    app_static: tuple[Path, ...] = ()) -> TemplateConfig[JinjaTemplateEngine]:
    """The `template_config` of an app whose templates are in `app_templates` and own assets in `app_static`."""
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(
        environment(app_templates, utc=utc, app_static=app_static)))


def static_files(*app_static: Path) -> Router:
    """`/static/…`: the app's own assets (`app_static`, searched first), then the shared ones (styles, scripts,
    the plotting library); the same directories as the app's `template_config` names for `static_url`."""
    return static_router(assets_of((*app_static, STATIC)))


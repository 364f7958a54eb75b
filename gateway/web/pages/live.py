"""The node UI's live streams (server-sent events, bounded as gateway.webkit.live says): the devices list's states and
latest values, and the dashboard's counters. Both read the gateway's state in memory on a timer and send what
changed; neither subscribes to the bus, so no browser can slow a reading down. The device page's own stream of one
twin is gateway.web.pages.devices.device_events.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from litestar import get
from litestar.params import FromQuery
from litestar.response import ServerSentEvent

from gateway.api import GatewayAPI
from gateway.errors import AuthError
from gateway.pipeline.twin import Twin
from gateway.protocols.base import BoundDevice
from gateway.web.auth import authenticate_token
from gateway.web.monitor import recent_errors
from gateway.web.pages.common import AnyRequest, gateway_of, session_auth
from gateway.web.security import requires
from gateway.webkit.live import SSE_OPT, Snapshot, Update, changes, stream_key
from gateway.webkit.sessions import BrowserSessions
from gateway.webkit.templating import format_value
from gateway.webkit.units import with_unit

viewer = [requires("viewer")]
LIST_VALUES = 6  # latest values a row of the devices list shows (a meter has dozens: its page shows them all)
DEVICES_EVERY = 1.0
STATUS_EVERY = 2.0
DEVICE_STATES = ("online", "unhealthy", "offline", "unknown")


def shown_properties(bound: BoundDevice) -> list[str]:
    """The properties whose latest values the devices list shows for a device, in the model's order."""
    return list(bound.properties)[:LIST_VALUES]


def value_text(bound: BoundDevice, twin: Twin, prop: str) -> str:
    """A property's latest value with its unit as people write it: `21.5 °C`; an en dash when there is none."""
    reported = twin.properties[prop].reported if prop in twin.properties else None
    text = format_value(reported)
    return text if reported is None else with_unit(text, bound.properties[prop].model.unit)


def device_row(bound: BoundDevice, twin: Twin) -> dict[str, Any]:
    """A row of the devices list: its state, when it last reported, its latest values (`value:<property>`)."""
    times = [p.reported_at for p in twin.properties.values() if p.reported_at]
    row: dict[str, Any] = {"state": twin.state, "reported_at": max(times) if times else None}
    for prop in shown_properties(bound):
        row[f"value:{prop}"] = value_text(bound, twin, prop)
    return row


def _allowed(request: AnyRequest) -> Callable[[], Awaitable[bool]]:
    """Whether the stream's caller may still see it: its session is alive and its user exists, or its token
    is still valid."""
    gateway = gateway_of(request)
    sessions: BrowserSessions = request.app.state.sessions
    auth = session_auth(request)

    async def allowed() -> bool:
        if auth is not None:
            return sessions.store.peek(auth.sid) is not None and await gateway.store.users.get(
                auth.session.user) is not None
        try:
            await authenticate_token(gateway.store, str(request.auth))
        except AuthError:
            return False
        return True

    return allowed


def respond(request: AnyRequest, updates: AsyncIterator[Update]) -> ServerSentEvent:
    """A live stream of the caller's session (or token), bounded and ended with it."""
    sessions: BrowserSessions = request.app.state.sessions
    auth = session_auth(request)
    key = stream_key(auth.sid if auth else None, None if auth else str(request.auth))
    return sessions.live.respond(key, updates, _allowed(request))


@get("/events/devices", guards=viewer, summary="Live states and latest values of devices (SSE)",
     include_in_schema=False, opt=SSE_OPT)
async def devices_events(request: AnyRequest, ids: FromQuery[str] = "") -> ServerSentEvent:
    """Event `update` every second something changed: `devices` rows by id (state, reported_at, value:<p>) and the
    `counts` per state. `?ids=ns/a,ns/b` limits the rows to the devices a page shows."""
    gateway = gateway_of(request)
    wanted = {device_id for device_id in ids.split(",") if device_id} if ids else None

    async def snapshot() -> Snapshot:
        rows: dict[str, Any] = {}
        counts = dict.fromkeys(("total", *DEVICE_STATES), 0)
        twins = gateway.twins()
        for device_id, bound in gateway.config.devices.items():
            twin = twins.get(device_id)
            if twin is None:  # being restarted with a new configuration this very moment
                continue
            counts["total"] += 1
            counts[twin.state] = counts.get(twin.state, 0) + 1
            if wanted is None or device_id in wanted:
                rows[device_id] = device_row(bound, twin)
        return {"counts": counts, "devices": rows}

    return respond(request, changes(snapshot, DEVICES_EVERY, "update"))


_status_cache: weakref.WeakKeyDictionary[GatewayAPI, tuple[float, Snapshot]] = weakref.WeakKeyDictionary()


def dashboard_counters(gateway: GatewayAPI) -> Snapshot:
    """The dashboard's counters, computed at most once a second however many dashboards are open."""
    cached = _status_cache.get(gateway)
    now = time.monotonic()
    if cached is not None and now - cached[0] < 1.0:
        return cached[1]
    status = gateway.status()
    devices = status.get("devices", {})
    tasks = status.get("tasks", {})
    failing = sorted(name for name, task in tasks.items() if task.get("state") not in ("running", "done"))
    uplink = tasks.get("uplink")
    store = status.get("store", {})
    counters = {
        "gateway": {"health": "degraded" if failing else "ok", "failing": ", ".join(failing),
                    "uptime_s": int(status.get("uptime_s", 0)), "uplink": uplink.get("state") if uplink else None},
        "devices": {"total": devices.get("total", 0), **{state: devices.get(state, 0) for state in DEVICE_STATES}},
        "poll": {"cycles": status.get("cycles", 0), "missed": status.get("missed_cycles", 0),
                 "p99_ms": (status.get("lateness_ms") or {}).get("p99")},
        "store": {"values_written": store.get("values_written", 0), "queued": store.get("queued", 0)},
        "errors": {"last_hour": len(recent_errors().since(3600))},
    }
    _status_cache[gateway] = (now, counters)
    return counters


@get("/events/status", guards=viewer, summary="Live counters of the dashboard (SSE)", include_in_schema=False,
     opt=SSE_OPT)
async def status_events(request: AnyRequest) -> ServerSentEvent:
    """Event `update` every two seconds something changed: records `gateway` (health, failing tasks, uptime,
    uplink), `devices` (counts per state), `poll` (cycles, missed, p99 lateness), `store` and `errors`."""
    gateway = gateway_of(request)

    async def snapshot() -> Snapshot:
        return dashboard_counters(gateway)

    return respond(request, changes(snapshot, STATUS_EVERY, "update"))


PAGES = [devices_events, status_events]

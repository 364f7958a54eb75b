"""Browser sessions (server-side, in memory), their CSRF check and the login rate limiter, for both web apps.

A session holds only the user name and its CSRF token: each app reads the user's role from its store on every
request, so a changed role or a removed user takes effect at once. Sessions end on logout, after `IDLE_TIMEOUT`
without a request, or when the app restarts. A request that changes something (POST, PUT, PATCH, DELETE) on a
session must carry the session's CSRF token, in the `_csrf` form field or the `X-CSRF-Token` header. Pages carry
the token masked with a fresh random pad each time (`mask_token`), so a compressed page never repeats the same
secret bytes an attacker could guess by the answer's length (BREACH); any masking of the token is accepted.
The live streams of a session (gateway.webkit.live) end with it.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import PermissionDeniedException

from gateway.webkit.live import LiveStreams

CSRF_FIELD = "_csrf"
CSRF_HEADER = "x-csrf-token"
IDLE_TIMEOUT = 8 * 3600.0
MAX_SESSIONS = 1000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Session:
    user: str
    csrf: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message) shown on the next page

    def take_flash(self) -> list[tuple[str, str]]:
        messages, self.flash = self.flash, []
        return messages


class SessionStore:
    """Session ids are 256 random bits; the oldest session goes when `MAX_SESSIONS` is reached."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, Session] = {}
        self._on_end: list[Callable[[str], None]] = []

    def on_end(self, listener: Callable[[str], None]) -> None:
        """Call `listener(sid)` whenever a session ends (logout, eviction, idle timeout, its user removed)."""
        self._on_end.append(listener)

    def create(self, user: str) -> tuple[str, Session]:
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            self._drop(min(self._sessions, key=lambda sid: self._sessions[sid].last_seen))
        now = time.time()
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now, now)
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        session = self.peek(sid)
        if session is not None:
            session.last_seen = time.time()
        return session

    def peek(self, sid: str) -> Session | None:
        """The session, without counting this as its use (a live stream is no sign that anybody is there)."""
        session = self._sessions.get(sid)
        if session is not None and time.time() - session.last_seen > self.idle_timeout:
            self._drop(sid)
            return None
        return session

    def end(self, sid: str) -> None:
        self._drop(sid)

    def end_user(self, user: str) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.user == user]:
            self._drop(sid)

    def _expire(self) -> None:
        cutoff = time.time() - self.idle_timeout
        for sid in [sid for sid, s in self._sessions.items() if s.last_seen < cutoff]:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        if self._sessions.pop(sid, None) is not None:
            for listener in self._on_end:
                listener(sid)


class LoginLimiter:
    """At most `limit` failed logins per `window` seconds per client address and per user name."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def blocked_for(self, *keys: str) -> float:
        """Seconds until a login for these keys may be tried again; 0 when it may be tried now."""
        now = time.time()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.limit:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = time.time()
        for key in keys:
            self._recent(key, now).append(now)
        if len(self._failures) > 10_000:  # forget idle keys so a scan of names cannot grow this without bound
            for key in [k for k, times in self._failures.items() if not times or times[-1] < now - self.window]:
                del self._failures[key]

    def succeeded(self, user_key: str) -> None:
        self._failures.pop(user_key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times


class CsrfRefused(PermissionDeniedException):
    """A session request that changes something without the session's CSRF token (answered 403)."""


class BrowserSessions:
    """One app's browser sessions: its cookie names, its session store and its login rate limiter."""

    def __init__(self, cookie: str, login_cookie: str, *, always_secure: bool = False) -> None:
        self.cookie = cookie  # the session id
        self.login_cookie = login_cookie  # the login form's double-submit CSRF token
        self.always_secure = always_secure  # Secure cookies even when a proxy in front speaks plain HTTP
        self.store = SessionStore()
        self.limiter = LoginLimiter()
        self.live = LiveStreams()  # the sessions' event streams, ended with their session
        self.store.on_end(self.live.end)

    def secure(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        return self.always_secure or connection.url.scheme == "https"

    def current(self, connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str, Session] | None:
        """The session id and session of the request's cookie, when it names a live session."""
        sid = connection.cookies.get(self.cookie, "")
        session = self.store.get(sid) if sid else None
        return (sid, session) if session is not None else None

    def session_cookie(self, connection: ASGIConnection[Any, Any, Any, Any], sid: str) -> Cookie:
        """The cookie that carries `sid`; an empty `sid` makes the cookie that ends it in the browser."""
        return Cookie(key=self.cookie, value=sid, path="/", httponly=True, samesite="lax",
                      secure=self.secure(connection), max_age=None if sid else 0)


async def check_csrf(connection: ASGIConnection[Any, Any, Any, Any], session: Session) -> None:
    """Refuse a request that changes something unless it carries `session`'s CSRF token (header or form field)."""
    if connection.scope.get("method", "GET") in SAFE_METHODS:
        return
    sent = connection.headers.get(CSRF_HEADER)
    if sent is None:
        content_type = connection.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            # Litestar keeps the parsed form in the scope, so the handler reads it again without the body.
            form = await Request[Any, Any, Any](connection.scope, connection.receive).form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    if not sent or not token_matches(sent, session.csrf):
        raise CsrfRefused("CSRF token missing or wrong: reload the page and try again")


def mask_token(token: str) -> str:
    """`token` XOR-ed with a fresh random pad, pad first (URL-safe base64): a new text for the same token each time."""
    raw = token.encode()
    pad = secrets.token_bytes(len(raw))
    return base64.urlsafe_b64encode(pad + bytes(a ^ b for a, b in zip(pad, raw, strict=True))).decode()


def token_matches(sent: str, token: str) -> bool:
    """Whether `sent` is `token`, as it is or masked by mask_token."""
    if secrets.compare_digest(sent.encode(), token.encode()):
        return True
    try:
        both = base64.urlsafe_b64decode(sent.encode())
    except ValueError:
        return False
    half = len(both) // 2
    if len(both) != 2 * len(token.encode()) or half == 0:
        return False
    return secrets.compare_digest(bytes(a ^ b for a, b in zip(both[:half], both[half:], strict=True)),
                                  token.encode())

"""Browser sessions (server-side, in memory) and the login rate limiter.

A session holds only the user name and its CSRF token: the role is read from the store on every request, so a
changed role or a removed user takes effect at once. Sessions end on logout, after `IDLE_TIMEOUT` without a
request, or when the gateway restarts.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field

SESSION_COOKIE = "fieldgate_session"
LOGIN_CSRF_COOKIE = "fieldgate_login_csrf"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "x-csrf-token"
IDLE_TIMEOUT = 8 * 3600.0
MAX_SESSIONS = 1000


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

    def create(self, user: str) -> tuple[str, Session]:
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda sid: self._sessions[sid].last_seen)
            del self._sessions[oldest]
        now = time.time()
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now, now)
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = time.time()
        if now - session.last_seen > self.idle_timeout:
            del self._sessions[sid]
            return None
        session.last_seen = now
        return session

    def end(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def end_user(self, user: str) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.user == user]:
            del self._sessions[sid]

    def _expire(self) -> None:
        cutoff = time.time() - self.idle_timeout
        for sid in [sid for sid, s in self._sessions.items() if s.last_seen < cutoff]:
            del self._sessions[sid]


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

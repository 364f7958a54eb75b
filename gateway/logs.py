"""The recent log: a bounded in-memory ring of log records, their context fields, and queries over them.

Every record may carry context fields: `device`, `route`, `sink` and `plugin`. A call can give them with
`extra=`; otherwise they come from `log_context()`, which the device pollers and the sink runners enter, so
everything logged inside a device's task (the protocol plugin's and its library's lines included) names the
device. `plugin` is also derived from the logger name of an installed plugin's modules. The ring serves
`GET /api/v1/logs`, the Logs page and the registry's on-demand node logs.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import importlib.metadata
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgspec

from gateway.errors import ConfigError
from gateway.resources.durations import Duration

RING_SIZE = 5000
DEFAULT_LIMIT = 200
RING_BYTES = 4 << 20  # message and traceback text the ring keeps at most: tracebacks must not eat a small box
MAX_MESSAGE = 4000
MAX_TRACEBACK = 16000
CONTEXT_FIELDS = ("device", "route", "sink", "plugin")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
QUERY_FIELDS = ("level", "device", "route", "sink", "logger", "contains", "since", "after", "limit")

_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("fieldgate_log_context",
                                                                          default=_NO_CONTEXT)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Records logged inside this block (and in tasks it starts) carry these context fields."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class Throttle:
    """Logs a kind of message (a key: where it came from and what was wrong) once per `interval`, and with the next
    one how many were left out: a flood of the same hostile message must not flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when logged last, left out since)

    def log(self, level: int, key: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(key, (-self.interval, 0))
        if now - last < self.interval:
            self._last[key] = (last, skipped + 1)
            return
        if len(self._last) > 1000:  # bounded: keys come from the outside
            self._last.clear()
        self._last[key] = (now, 0)
        if skipped:
            message += f" ({skipped} more like it in the last {self.interval:g} s not logged)"
        self.logger.log(level, message, *args, exc_info=exc_info)


def _plugin_modules() -> dict[str, str]:
    """Top-level module of every installed `fieldgate` entry point -> the plugin's name."""
    modules = {}
    for entry_point in importlib.metadata.entry_points(group="fieldgate"):
        top = entry_point.value.split(":")[0].split(".")[0]
        if top and top != "gateway":
            modules[top] = entry_point.name
    return modules


class ContextFilter(logging.Filter):
    """Adds the current context fields to a record that does not carry them yet (installed on each handler)."""

    def __init__(self, plugin_modules: dict[str, str] | None = None) -> None:
        super().__init__()
        self.plugin_modules = plugin_modules or {}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        if getattr(record, "plugin", None) is None:
            plugin = self.plugin_modules.get(record.name.partition(".")[0])
            if plugin is not None:
                record.plugin = plugin
        return True


def context_fields(record: logging.LogRecord) -> dict[str, str]:
    """The context fields a record carries, as strings."""
    return {key: str(value) for key in CONTEXT_FIELDS if (value := getattr(record, key, None)) is not None}


class LogEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: int
    ts: float
    level: str
    logger: str
    message: str
    device: str | None = None
    route: str | None = None
    sink: str | None = None
    plugin: str | None = None
    exception: str | None = None  # the traceback text


class LogPage(msgspec.Struct, kw_only=True):
    records: list[LogEntry]  # oldest first
    cursor: int  # pass it as ?after= to get only newer records
    more: bool = False  # the limit cut this answer short: ask again with ?after=cursor
    skipped: int = 0  # records after ?after= that the ring had already dropped


def _since(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    with contextlib.suppress(ValueError):  # not unix seconds, so a parsed duration carries a unit: "15m" ago
        return time.time() - Duration.parse(raw)
    try:
        when = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"?since={raw}: expected an ISO 8601 time, unix seconds or a duration ago like 15m"
                          ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _int(name: str, raw: str, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"?{name}={raw}: expected a whole number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"?{name}={raw}: expected {minimum} to {maximum}")
    return value


@dataclass(frozen=True, kw_only=True)
class LogQuery:
    """Which records to return; empty strings mean no filter."""

    level: str = ""
    device: str = ""
    route: str = ""
    sink: str = ""
    logger: str = ""  # a logger name prefix: `gateway.registry` takes `gateway.uplink.client`
    contains: str = ""  # text in the message or the traceback, case-insensitive
    since: float | None = None
    after: int | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> LogQuery:
        """From query parameters; ConfigError naming the parameter when one is wrong or unknown."""
        if unknown := sorted(set(params) - set(QUERY_FIELDS)):
            raise ConfigError(f"?{unknown[0]}: unknown parameter; expected {', '.join(QUERY_FIELDS)}")
        values = {key: str(params[key]).strip() for key in QUERY_FIELDS if params.get(key) not in (None, "")}
        level = values.get("level", "").lower()
        if level and level not in LEVELS:
            raise ConfigError(f"?level={values['level']}: expected one of {', '.join(LEVELS)}")
        return cls(
            level=level, device=values.get("device", ""), route=values.get("route", ""),
            sink=values.get("sink", ""), logger=values.get("logger", ""), contains=values.get("contains", ""),
            since=_since(values["since"]) if "since" in values else None,
            after=_int("after", values["after"], 0, 2**62) if "after" in values else None,
            limit=_int("limit", values["limit"], 1, RING_SIZE) if "limit" in values else DEFAULT_LIMIT,
        )

    def params(self) -> dict[str, str]:
        """As query parameters again (what the registry forwards to a node)."""
        raw = {"level": self.level, "device": self.device, "route": self.route, "sink": self.sink,
               "logger": self.logger, "contains": self.contains,
               "since": "" if self.since is None else repr(self.since),
               "after": "" if self.after is None else str(self.after), "limit": str(self.limit)}
        return {key: value for key, value in raw.items() if value}

    def matches(self, entry: LogEntry) -> bool:
        if self.level and LEVELS.get(entry.level, 0) < LEVELS[self.level]:
            return False
        if self.since is not None and entry.ts < self.since:
            return False
        if self.device and not _same_device(self.device, entry.device):
            return False
        if self.route and not _same_device(self.route, entry.route):
            return False
        if self.sink and entry.sink != self.sink:
            return False
        if self.logger and not (entry.logger == self.logger or entry.logger.startswith(self.logger + ".")):
            return False
        if self.contains:
            needle = self.contains.casefold()
            if needle not in entry.message.casefold() and needle not in (entry.exception or "").casefold():
                return False
        return True


def _same_device(wanted: str, have: str | None) -> bool:
    """`default/boiler-1` matches itself; a bare `boiler-1` matches it in any namespace."""
    if have is None:
        return False
    return have == wanted or ("/" not in wanted and have.endswith("/" + wanted))


class LogRing(logging.Handler):
    """The last `size` log records of this process (fewer when their text passes `max_bytes`), each with an id
    that only grows."""

    def __init__(self, size: int = RING_SIZE, max_bytes: int = RING_BYTES) -> None:
        super().__init__(logging.NOTSET)
        self.entries: deque[LogEntry] = deque()
        self.size = size
        self.max_bytes = max_bytes
        self.text_bytes = 0
        self.last_id = 0
        self._guard = threading.Lock()  # emit() may run on any thread (SQLite workers, servers)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not break logging
            message = str(record.msg)
        exception = None
        if record.exc_info and record.exc_info[1] is not None:
            exception = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            exception = record.exc_text
        if record.stack_info:
            exception = f"{exception or ''}{record.stack_info}"
        if exception is not None and len(exception) > MAX_TRACEBACK:
            exception = "\u2026" + exception[-MAX_TRACEBACK:]  # the end of a traceback says the most
        entry = LogEntry(id=0, ts=record.created, level=record.levelname.lower(), logger=record.name,
                         message=message[:MAX_MESSAGE], exception=exception, **context_fields(record))
        with self._guard:
            self.last_id += 1
            entry.id = self.last_id
            self.entries.append(entry)
            self.text_bytes += _text_bytes(entry)
            while len(self.entries) > self.size or (self.text_bytes > self.max_bytes and len(self.entries) > 1):
                self.text_bytes -= _text_bytes(self.entries.popleft())

    def query(self, query: LogQuery) -> LogPage:
        """Matching records, oldest first: the newest `limit` of them, or with `after` the first `limit`
        newer than that id (a cursor from an earlier answer; one beyond the newest record, as after a
        restart, starts again from the newest)."""
        with self._guard:
            entries, last_id = list(self.entries), self.last_id
        first_id = entries[0].id if entries else last_id + 1
        if query.after is None or query.after > last_id:
            return LogPage(records=[e for e in entries if query.matches(e)][-query.limit:], cursor=last_id)
        start = max(query.after - first_id + 1, 0)
        found: list[LogEntry] = []
        for entry in entries[start:]:
            if query.matches(entry):
                if len(found) == query.limit:
                    return LogPage(records=found, cursor=found[-1].id, more=True,
                                   skipped=max(first_id - query.after - 1, 0))
                found.append(entry)
        return LogPage(records=found, cursor=last_id, skipped=max(first_id - query.after - 1, 0))


def _text_bytes(entry: LogEntry) -> int:
    return len(entry.message) + len(entry.exception or "")


_ring: LogRing | None = None
_context_filter: ContextFilter | None = None
_install_lock = threading.Lock()


def log_ring() -> LogRing:
    """This process's ring, installed on the root logger (with the context filter on every root handler) on
    first use; `fieldgate run` installs it at start."""
    global _ring, _context_filter
    with _install_lock:
        root = logging.getLogger()
        if _ring is None or _context_filter is None:
            _context_filter = ContextFilter(_plugin_modules())
            _ring = LogRing()
        for handler in [*root.handlers, _ring]:  # handlers set up since the last call get it too
            if _context_filter not in handler.filters:
                handler.addFilter(_context_filter)
        if _ring not in root.handlers:
            root.addHandler(_ring)
        return _ring

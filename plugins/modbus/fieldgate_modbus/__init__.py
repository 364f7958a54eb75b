"""Modbus TCP and RTU for fieldgate: protocols, read planning and a device simulator."""

import logging

__version__ = "0.1.0"


class _OnlyWhenDebugging(logging.Filter):
    """pymodbus logs every unanswered request at ERROR with a dump of recent frames (and its simulator a traceback
    for a unit it does not serve); the link reports a device's state changes itself, once each. pymodbus' own lines
    pass only when the process logs at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger().isEnabledFor(logging.DEBUG)


logging.getLogger("pymodbus.logging").addFilter(_OnlyWhenDebugging())

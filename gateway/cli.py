"""`fieldgate` command line: sub-commands come from plugins (built-in ones included) via register_commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.errors import FieldgateError, ResourceError
from gateway.logs import context_fields, log_ring
from gateway.plugins import get_plugin_manager

EXIT_BAD_INPUT = 2


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message}\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (given the arguments) only the asked-for command's arguments: the others are
    listed by name and help, and what configuring them would import is left alone."""
    parser = _ArgumentParser(prog="fieldgate", description="Edge gateway for field devices.")
    parser.add_argument("--version", action="version", version=f"fieldgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    asked = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), "")
    pm = get_plugin_manager()
    for commands in pm.hook.register_commands():
        for command in commands:
            command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
            if asked is None or command.name == asked:
                command.configure_parser(command_parser)
                command_parser.set_defaults(run=command.runner())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.run(args))
    except ResourceError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    except FieldgateError as exc:
        print(f"fieldgate {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        entry.update(context_fields(record))  # device, route, sink, plugin
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(fmt: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the recent log behind /logs, GET /api/v1/logs and the registry's node logs, from this command's first line on
    log_ring()
    for chatty in ("httpx", "httpcore"):  # a line per registry heartbeat and poll would crowd out the log ring
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))

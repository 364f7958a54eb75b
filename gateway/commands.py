"""The CLI command type that built-in features and plugins register through `register_commands`."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """One `fieldgate <name>` sub-command: `configure` adds its arguments, `run` returns the exit code.

    Either may be given as `"module:function"`: the module is imported only when that command is the one asked
    for, so a plugin's command does not slow down every other command (`fieldgate run` above all) by importing
    what only it needs."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | str
    run: Callable[[argparse.Namespace], int] | str

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        _resolve(self.configure)(parser)

    def runner(self) -> Callable[[argparse.Namespace], int]:
        return _lazy_run(self.run) if isinstance(self.run, str) else self.run


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"a command's function {target!r} is not 'module:function'")
    function: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return function


def _lazy_run(target: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return int(_resolve(target)(args))
    return run

"""Fixtures for services: the workloads' node fixture and an echo app."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from tests.registry.conftest import registry as registry
from tests.workloads.conftest import start_node as start_node

APPS = Path(__file__).resolve().parent / "apps"
ECHO = APPS / "echo.py"
PYTHON = sys.executable


def service_network() -> str:
    """A loopback /24 of its own for one test's service addresses (tests run side by side)."""
    return f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"

"""Fixtures: a real mosquitto on a free loopback port and a gateway on a temp data dir (gateway.testing)."""

from __future__ import annotations

from gateway.testing import Mosquitto, free_port, mosquitto, start_gateway, write_config

__all__ = ["Mosquitto", "free_port", "mosquitto", "start_gateway", "write_config"]

"""Modbus TCP and RTU for fieldgate: protocols, read planning and a device simulator."""

__version__ = "0.1.0"

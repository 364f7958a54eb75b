"""Protocols: how the poller talks to devices. Built-in `virtual`; others come from plugins."""

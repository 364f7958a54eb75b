"""One reading's way through the gateway: poller, twin, bus, routes, value conversion, supervised tasks."""

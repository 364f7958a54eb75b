"""The node's side of the wire to the registry: join, the uplink client and what rides it."""

"""Services across the fleet on the node: addresses, DNS, proxies and node-to-node streams."""

"""Edge apps on the node: workloads run by runtimes (the built-in `process` one or a plugin's), supervised,
health-checked, limited, versioned, with their config items and secrets."""

"""Around the gateway, not in its data path: systemd, upgrades, metrics, benchmarks, docs, the demo."""

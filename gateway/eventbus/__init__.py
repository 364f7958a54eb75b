"""The eventbus: local apps talk to the gateway over MQTT (telemetry and the KubeEdge twin topics)."""

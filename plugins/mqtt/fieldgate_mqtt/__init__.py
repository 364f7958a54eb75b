"""MQTT devices for fieldgate: values from the messages a device publishes, desired values published as commands."""

__version__ = "0.1.0"

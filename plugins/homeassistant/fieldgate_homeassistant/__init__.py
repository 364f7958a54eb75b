"""Home Assistant MQTT discovery for fieldgate devices."""

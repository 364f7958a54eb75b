"""InfluxDB line-protocol writer for fieldgate."""

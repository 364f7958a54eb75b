"""BACnet/IP for fieldgate: the `bacnet-ip` protocol (bacpypes3) and `fieldgate browse bacnet`."""

__version__ = "0.1.0"

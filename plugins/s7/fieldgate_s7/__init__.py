"""Siemens S7 for fieldgate: the `s7` protocol on python-snap7, with read planning within the negotiated PDU."""

__version__ = "0.1.0"

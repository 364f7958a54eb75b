"""fieldgate: an edge gateway for field devices."""

__version__ = "0.2.0"

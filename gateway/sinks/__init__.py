"""Sinks: northbound targets behind one hook; the core owns retry, backoff, ordering and the durable outbox."""

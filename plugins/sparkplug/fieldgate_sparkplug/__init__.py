"""Eclipse Sparkplug B 3.0 edge node for fieldgate devices."""

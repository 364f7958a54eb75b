"""Resource documents: schema, durations and the loader."""

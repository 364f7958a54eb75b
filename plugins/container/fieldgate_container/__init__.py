"""The container runtime for fieldgate edge apps."""

"""One module per study plus the shared runner."""

"""scripts of pyro-backpass (used from a clone, not installed)."""

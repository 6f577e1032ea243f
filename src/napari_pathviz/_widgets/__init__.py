"""Dock widgets: thin layers over the core, one per job."""

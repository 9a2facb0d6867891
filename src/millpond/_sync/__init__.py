"""The threaded shell: ``millpond.Pool``."""

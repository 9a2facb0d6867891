"""The asyncio shell: ``millpond.AsyncPool``."""

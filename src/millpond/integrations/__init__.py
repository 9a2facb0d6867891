"""Integrations with other libraries, one module each (``millpond.integrations.sqlalchemy``).

Nothing is imported here: each integration imports its library, and ``import millpond`` must
stay free of them.
"""

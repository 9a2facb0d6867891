"""A small Django project for the backend tests: settings from the environment, one app."""

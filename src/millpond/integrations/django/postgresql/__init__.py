"""``ENGINE: "millpond.integrations.django.postgresql"``: Django's PostgreSQL backend on a millpond pool."""

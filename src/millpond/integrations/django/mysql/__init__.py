"""``ENGINE: "millpond.integrations.django.mysql"``: Django's MySQL/MariaDB backend on a millpond pool."""

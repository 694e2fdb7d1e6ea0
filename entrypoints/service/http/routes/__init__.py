"""The HTTP route handlers, one module per area; thin translators around the use cases."""

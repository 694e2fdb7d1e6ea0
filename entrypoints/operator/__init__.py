"""Tools for whoever runs a deployment: `migrate`, `doctor`, `repair-connections`."""

"""Tools for working on the service: the local stack (`dev`), its launcher, and `make demo`."""

"""An example host app for calendly-connect: its own sign-in, JWKS, page and notification inbox.

Run it with `python -m host_app` from examples/host-app/ (or `make example` from the repository,
which starts the whole local stack beside it). It imports nothing from calendly-connect: it talks
to the service over HTTP only, exactly as a host app in another repository would.
"""

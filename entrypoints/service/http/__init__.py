"""The HTTP entrypoint: a Litestar app of thin handlers around the use cases."""

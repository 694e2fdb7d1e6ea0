"""A stateful, faithful Calendly look-alike over real HTTP (it imports nothing from the core)."""

from .app import RunningSandbox, create_app, main, serve
from .config import OAuthClient, SandboxConfig, Settings
from .delivery import sign
from .state import SANDBOX, Sandbox

__all__ = [
    "SANDBOX",
    "OAuthClient",
    "RunningSandbox",
    "Sandbox",
    "SandboxConfig",
    "Settings",
    "create_app",
    "main",
    "serve",
    "sign",
]

"""Environments for `load_settings`: a minimal valid one, a full one, and the canaries in them."""

from __future__ import annotations

import base64

KEY_NEW = bytes(range(32))
KEY_OLD = bytes(range(50, 82))
DB_PASSWORD = "db-password-canary-7f3a"
CLIENT_SECRET = "client-secret-canary-91c2"
SIGNING_KEY = "signing-key-canary-a1b2c3"
OLD_SIGNING_KEY = "signing-key-canary-old-d4e5"
JWT_SECRET = "jwt-secret-canary-0123456789abcdefghij"


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def minimal_env(**overrides: str) -> dict[str, str]:
    """Only the required variables, each valid; `overrides` replace or add variables."""
    env = {
        "DATABASE_URL": f"postgresql://owner:{DB_PASSWORD}@localhost:5432/calendly",
        "CALENDLY_OAUTH_CLIENT_ID": "client-id",
        "CALENDLY_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        "CALENDLY_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
        "PUBLIC_BASE_URL": "https://calendly.example.com",
        "TOKEN_ENCRYPTION_KEY": f"k2:{b64(KEY_NEW)}",
        "JWT_SECRET": JWT_SECRET,
    }
    env.update(overrides)
    return env


def full_env() -> dict[str, str]:
    """Every variable set to something other than its default."""
    return minimal_env(
        DATABASE_RUNTIME_ROLE="app_runtime",
        DB_POOL_MIN_SIZE="2",
        DB_POOL_MAX_SIZE="20",
        CALENDLY_WEBHOOK_SIGNING_KEY=f"{SIGNING_KEY}, {OLD_SIGNING_KEY}",
        CALENDLY_AUTH_BASE_URL="http://127.0.0.1:8765",
        CALENDLY_API_BASE_URL="http://localhost:8765/",
        CALENDLY_OAUTH_SCOPE="default",
        CALENDLY_OAUTH_REDIRECT_URI="https://calendly.example.com/custom/callback",
        CALENDLY_WEBHOOK_CALLBACK_BASE="https://hooks.example.com/in/",
        APP_ORIGINS="https://app.example.com, http://localhost:3000,https://APP.example.com:443",
        TOKEN_ENCRYPTION_KEY=f"k2:{b64(KEY_NEW)},k1:{b64(KEY_OLD)}",
        JWT_AUDIENCE="my-app",
        JWT_ISSUER="https://auth.example.com",
        DEV_LOGIN_ENABLED="no",
        WEBHOOK_TOLERANCE_SECONDS="300",
        TOKEN_REFRESH_MARGIN_SECONDS="600",
        LOG_FORMAT="JSON",
        LOG_LEVEL="debug",
        HOST="192.0.2.10",
        PORT="9000",
    )

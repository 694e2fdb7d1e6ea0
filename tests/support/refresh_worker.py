"""A separate process that asks for a fresh access token (for the two-process refresh test).

Usage: python -m tests.support.refresh_worker DB_URL CALENDLY_URL CLIENT_ID SECRET USER_ID KEY
Prints the access token it ended up with (the SHA-256 of it, never the token itself).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys

import aiohttp

from adapters.calendly import AiohttpCalendlyApi
from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.pool import open_pool
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.system import SystemClock
from domain.secret import Secret
from domain.usecases.refresh_access_token import RefreshAccessToken
from tests.support.postgres import RUNTIME_ROLE


async def main(
    db_url: str, calendly_url: str, client_id: str, secret: str, user_id: str, key: str
) -> None:
    pool = await open_pool(db_url, runtime_role=RUNTIME_ROLE, min_size=1, max_size=2)
    cipher = AesGcmTokenCipher({"k1": base64.urlsafe_b64decode(key)}, "k1")
    try:
        async with aiohttp.ClientSession() as session:
            calendly = AiohttpCalendlyApi(
                session,
                client_id=client_id,
                client_secret=Secret(secret),
                auth_base_url=calendly_url,
                api_base_url=calendly_url,
            )
            tokens = RefreshAccessToken(unit_of_work_factory(pool, cipher), calendly, SystemClock())
            print("ready", flush=True)
            sys.stdin.readline()  # both processes start refreshing at the same moment
            _, token = await tokens.access_token(user_id)
            print(hashlib.sha256(token.reveal().encode()).hexdigest(), flush=True)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))

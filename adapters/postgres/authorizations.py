"""OAuth round trips in flight over psycopg 3: each state is taken once."""

from __future__ import annotations

from typing import Any, ClassVar

from domain.model import PendingAuthorization
from domain.ports import AuthorizationRepository

from .sealing import TokenCipher
from .session import ReadOnly, Session

INSERT_AUTHORIZATION = """
WITH expired AS (DELETE FROM calendly_oauth_states WHERE expires_at < now() - interval '1 day')
INSERT INTO calendly_oauth_states
    (state, user_id, code_verifier_enc, browser_binding, completion_challenge, created_at,
     expires_at)
VALUES (%(state)s, %(user_id)s, %(verifier)s, %(binding)s, %(challenge)s, %(created_at)s,
        %(expires_at)s)
"""
AUTHORIZATION_COLUMNS = """
state, user_id, code_verifier_enc, browser_binding, completion_challenge, created_at, expires_at
"""
PEEK_AUTHORIZATION = f"""
SELECT {AUTHORIZATION_COLUMNS} FROM calendly_oauth_states WHERE state = %(state)s
"""  # noqa: S608 (a constant column list, no input)
TAKE_AUTHORIZATION = f"""
DELETE FROM calendly_oauth_states WHERE state = %(state)s
RETURNING {AUTHORIZATION_COLUMNS}
"""  # noqa: S608 (a constant column list, no input)


class PostgresAuthorizationRepository(AuthorizationRepository):
    # Adding and taking write (taking a state deletes it).
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly(reads=frozenset({PEEK_AUTHORIZATION}))

    def __init__(self, session: Session, cipher: TokenCipher) -> None:
        self._session = session
        self._cipher = cipher

    async def add(self, pending: PendingAuthorization) -> None:
        verifier = self._cipher.encrypt(
            pending.code_verifier, context=f"calendly_oauth_states:{pending.state}"
        )
        await self._session.execute(
            INSERT_AUTHORIZATION,
            {
                "state": pending.state,
                "user_id": pending.user_id,
                "verifier": verifier,
                "binding": pending.browser_binding,
                "challenge": pending.completion_challenge,
                "created_at": pending.created_at,
                "expires_at": pending.expires_at,
            },
        )

    async def peek(self, state: str) -> PendingAuthorization | None:
        cursor = await self._session.execute(PEEK_AUTHORIZATION, {"state": state})
        return self._to_domain(await cursor.fetchone())

    async def take(self, state: str) -> PendingAuthorization | None:
        cursor = await self._session.execute(TAKE_AUTHORIZATION, {"state": state})
        return self._to_domain(await cursor.fetchone())

    def _to_domain(self, row: dict[str, Any] | None) -> PendingAuthorization | None:
        if row is None:
            return None
        return PendingAuthorization(
            state=row["state"],
            user_id=row["user_id"],
            code_verifier=self._cipher.decrypt(
                row["code_verifier_enc"], context=f"calendly_oauth_states:{row['state']}"
            ),
            browser_binding=row["browser_binding"],
            completion_challenge=row["completion_challenge"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )

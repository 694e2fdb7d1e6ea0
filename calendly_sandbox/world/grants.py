"""OAuth as Calendly grants it: clients, single-use codes, rotating refresh tokens, revocation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable

from calendly_sandbox.config import OAuthClient
from calendly_sandbox.errors import ApiError, OAuthError
from calendly_sandbox.model import AuthorizationCode, TokenGrant, User, new_secret

from .context import Context
from .people import People


def pkce_s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Grants:
    """Registered clients, authorization codes and the token pairs issued for them."""

    def __init__(
        self,
        context: Context,
        people: People,
        clients: Iterable[OAuthClient],
        new_token: Callable[[str], str] = new_secret,
    ) -> None:
        self.context = context
        self.people = people
        self.new_token = new_token
        self.clients: dict[str, OAuthClient] = {c.client_id: c for c in clients}
        self.codes: dict[str, AuthorizationCode] = {}
        self.by_access: dict[str, TokenGrant] = {}
        self.by_refresh: dict[str, TokenGrant] = {}

    # -------------------------------------------------------------- clients
    def client(self, client_id: str) -> OAuthClient | None:
        return self.clients.get(client_id)

    def authenticate_client(self, client_id: str | None, client_secret: str | None) -> OAuthClient:
        """The client whose secret matches; raises OAuthError 401 `invalid_client`."""
        client = self.clients.get(client_id or "")
        if client is None or client_secret is None:
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        if not hmac.compare_digest(client.client_secret.encode(), client_secret.encode()):
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        return client

    # ---------------------------------------------------------------- codes
    def issue_code(
        self, client: OAuthClient, redirect_uri: str, user: User, code_challenge: str | None
    ) -> str:
        code = secrets.token_urlsafe(32)
        self.codes[code] = AuthorizationCode(
            code=code,
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            user_id=user.id,
            code_challenge=code_challenge,
            expires_at=self.context.clock.now() + self.context.settings.authorization_code_ttl,
        )
        return code

    def redeem_code(
        self, client: OAuthClient, code: str, redirect_uri: str | None, verifier: str | None
    ) -> TokenGrant:
        """A new token pair for a code, which is then used up; raises OAuthError `invalid_grant`."""
        grant = self.codes.get(code)
        if grant is None or grant.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "The provided authorization grant is invalid.")
        if grant.used:
            raise OAuthError(400, "invalid_grant", "The authorization code has already been used.")
        if grant.expires_at <= self.context.clock.now():
            raise OAuthError(400, "invalid_grant", "The authorization code has expired.")
        if redirect_uri != grant.redirect_uri:
            raise OAuthError(
                400, "invalid_grant", "The redirect_uri does not match the authorization request."
            )
        if grant.code_challenge is not None:
            if not verifier:
                raise OAuthError(400, "invalid_grant", "The code_verifier is missing.")
            if not hmac.compare_digest(pkce_s256(verifier), grant.code_challenge):
                raise OAuthError(400, "invalid_grant", "The code_verifier does not match.")
        grant.used = True
        return self._issue_tokens(client.client_id, grant.user_id)

    def user_for_code(self, code: str) -> str | None:
        grant = self.codes.get(code)
        return grant.user_id if grant else None

    # --------------------------------------------------------------- tokens
    def refresh(self, client: OAuthClient, refresh_token: str) -> TokenGrant:
        """A new token pair; the refresh token is single use. Raises OAuthError `invalid_grant`."""
        old = self.by_refresh.get(refresh_token)
        if old is None or old.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "The provided authorization grant is invalid.")
        if old.refresh_used or old.refresh_revoked:
            raise OAuthError(400, "invalid_grant", "The refresh token is invalid or was revoked.")
        old.refresh_used = True
        return self._issue_tokens(client.client_id, old.user_id)

    def user_for_refresh(self, refresh_token: str) -> str | None:
        grant = self.by_refresh.get(refresh_token)
        return grant.user_id if grant else None

    def _issue_tokens(self, client_id: str, user_id: str) -> TokenGrant:
        now = self.context.clock.now()
        grant = TokenGrant(
            access_token=self.new_token("sbx_at"),
            refresh_token=self.new_token("sbx_rt"),
            client_id=client_id,
            user_id=user_id,
            created_at=now,
            expires_at=now + self.context.settings.access_token_ttl,
        )
        self.by_access[grant.access_token] = grant
        self.by_refresh[grant.refresh_token] = grant
        return grant

    def find(self, token: str) -> TokenGrant | None:
        return self.by_access.get(token) or self.by_refresh.get(token)

    def active_grant(self, client: OAuthClient, token: str) -> TokenGrant | None:
        """The grant of `token` while the token still works, if `client` was issued it."""
        grant = self.find(token)
        if grant is None or grant.client_id != client.client_id:
            return None
        if token == grant.access_token:
            active = not grant.access_revoked and grant.expires_at > self.context.clock.now()
        else:
            active = not grant.refresh_used and not grant.refresh_revoked
        return grant if active else None

    def bearer_user(self, token: str) -> tuple[TokenGrant, User]:
        """The grant and user of a working access token; raises ApiError 401."""
        grant = self.by_access.get(token)
        if grant is None or grant.access_revoked or grant.expires_at <= self.context.clock.now():
            raise ApiError(401)
        return grant, self.people.users[grant.user_id]

    # ----------------------------------------------------------- revocation
    def revoke(self, client: OAuthClient, token: str) -> None:
        grant = self.find(token)
        # RFC 7009: an unknown token is not an error, and a client may not revoke others' tokens.
        if grant is None or grant.client_id != client.client_id:
            return
        grant.access_revoked = True
        grant.refresh_revoked = True

    def expire_access_tokens(self, user_id: str) -> int:
        now = self.context.clock.now()
        count = 0
        for grant in self.by_access.values():
            if grant.user_id == user_id and grant.expires_at > now:
                grant.expires_at = now
                count += 1
        return count

    def revoke_all(self, user_id: str) -> int:
        """The user removed the app in Calendly: every token of theirs stops working."""
        count = 0
        for grant in self.by_access.values():
            if grant.user_id == user_id and not (grant.access_revoked and grant.refresh_revoked):
                grant.access_revoked = True
                grant.refresh_revoked = True
                count += 1
        return count

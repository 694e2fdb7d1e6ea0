"""The domain's errors: a small hierarchy that carries data, mapped to HTTP in one place."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the core raises on purpose."""


class NotAuthenticated(DomainError):
    """The caller is not a signed-in app user."""


class InsufficientScope(DomainError):
    """The API key is valid but its scope does not allow this call (a `read` key writing)."""

    def __init__(self, needed: str) -> None:
        super().__init__(
            f"this API key may not do this: it needs the '{needed}' scope; create a key with "
            f"`calendly-connect api-keys create --scope {needed}`"
        )
        self.needed = needed


class ApiKeyNotFound(DomainError):
    """No API key has that id or prefix."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"no API key has the id or prefix {reference!r}")
        self.reference = reference


class ConnectionNotFound(DomainError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"no Calendly connection for this user ({user_id})")
        self.user_id = user_id


class CursorExpired(DomainError):
    """A change-feed cursor from before the position the change log was pruned up to."""

    def __init__(self) -> None:
        super().__init__(
            "This cursor is older than the change log keeps (CHANGE_LOG_RETENTION_DAYS): changes "
            "after it were pruned. Resync: list /v1/connections and each user's "
            "/v1/users/{user_id}/meetings, then follow the feed from the start (no `after`)."
        )


class AuthorizationStateInvalid(DomainError):
    """The OAuth `state` is unknown, used, expired, or belongs to another user or browser."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the authorization request is not valid: {reason}")
        self.reason = reason


class AuthorizationDenied(DomainError):
    """The person declined access on Calendly's consent page (or Calendly reported an error)."""

    def __init__(self, error: str, description: str | None) -> None:
        super().__init__(f"Calendly did not authorize the connection: {error}")
        self.error = error
        self.description = description


class AccountAlreadyConnected(DomainError):
    """The Calendly account is connected to another app user; webhooks route to exactly one."""

    def __init__(self, calendly_user_uri: str) -> None:
        super().__init__(
            "This Calendly account is already connected to another user of this app. Sign in to "
            "Calendly with a different account, or disconnect it from the other user first."
        )
        self.calendly_user_uri = calendly_user_uri


class ConcurrentUpdate(DomainError):
    """Someone else changed the connection first (optimistic version check)."""


class ReauthorizationRequired(DomainError):
    """Calendly no longer accepts the stored grant: the user must authorize again."""

    def __init__(self, user_id: str, reason: str) -> None:
        super().__init__(f"the Calendly connection needs to be authorized again: {reason}")
        self.user_id = user_id
        self.reason = reason


class CalendlyError(DomainError):
    """Calendly answered with an error; `status` and `body` are what it said."""

    def __init__(self, status: int, body: object, message: str | None = None) -> None:
        super().__init__(message or f"Calendly answered {status}")
        self.status = status
        self.body = body


class InvalidGrant(CalendlyError):
    """The token endpoint said `invalid_grant`: the code or refresh token is no longer valid."""


class TokenRejected(CalendlyError):
    """The API answered 401 for the access token."""


class PlanRequired(CalendlyError):
    """The account's plan does not allow webhooks ("Please upgrade your Calendly account")."""


class PermissionDenied(CalendlyError):
    """Calendly answered 403 for another reason than the plan."""


class ResourceNotFound(CalendlyError):
    """Calendly answered 404."""


class AlreadyExists(CalendlyError):
    """Calendly answered 409 (a subscription with this callback URL exists)."""


class RateLimited(CalendlyError):
    """Calendly answered 429; `retry_after` is its `X-RateLimit-Reset` in seconds."""

    def __init__(self, status: int, body: object, retry_after: float) -> None:
        super().__init__(status, body, f"Calendly rate limit reached; retry in {retry_after:g}s")
        self.retry_after = retry_after


class CalendlyUnavailable(CalendlyError):
    """Calendly could not be reached, timed out or answered 5xx."""


class InvalidSignature(DomainError):
    """A webhook delivery's signature is missing, malformed, stale or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"webhook signature rejected: {reason}")
        self.reason = reason


class UnusablePayload(DomainError):
    """A correctly signed delivery that cannot be applied (it is stored aside, not refused)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StorageUnavailable(DomainError):
    """The database cannot be reached; the caller should retry later."""


class RouteChanged(DomainError):
    """The route a delivery was judged by is no longer its connection's: the connection was
    disconnected, reconnected or given another signing key between the lookup and the write.
    Nothing was written; the delivery must be judged again with the route as it is now."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(f"the route of connection {connection_id} changed during the delivery")
        self.connection_id = connection_id


class StoredSecretUnreadable(DomainError):
    """A secret stored encrypted cannot be opened with the configured keys: its key id is not
    in TOKEN_ENCRYPTION_KEY (a key dropped, or a database left from another deployment), or
    the stored bytes were altered. Only the operator can fix it (put the key back), or the
    user, by connecting again once the connection is cleared."""

    # What to do, for whoever reports it (an HTTP answer, the worker's log, the doctor).
    FIX = (
        "add the key it was sealed with back to TOKEN_ENCRYPTION_KEY (after the active one: "
        "old keys still decrypt), or, if that key is lost, have the user disconnect and "
        "connect Calendly again"
    )

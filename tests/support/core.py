"""The core wired to hand-written fakes: fast, deterministic, and steerable."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from adapters.calendly.webhook_decoder import MsgspecWebhookDecoder
from adapters.system import SecretsRandomness
from domain.secret import Secret
from domain.usecases.api_keys import AuthenticateApiKey, CreateApiKey, RevokeApiKey
from domain.usecases.complete_connect import (
    CompleteConnect,
    CompleteConnectCommand,
    CompleteConnectResult,
)
from domain.usecases.complete_meetings import CompleteMeetings
from domain.usecases.disconnect import Disconnect
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.erase_user import EraseUser
from domain.usecases.handle_webhook_event import HandleWebhookEvent, UnitOfWorkLedger
from domain.usecases.maintain_connection import MaintainConnection
from domain.usecases.queries import (
    GetConnectionStatus,
    ListConnections,
    ListMeetings,
    ReadChanges,
)
from domain.usecases.reconnect import Reconnect
from domain.usecases.refresh_access_token import RefreshAccessToken
from domain.usecases.start_connect import StartConnect, StartConnectCommand
from domain.usecases.sync_meetings import SyncMeetings
from tests.fakes.calendly import FakeCalendlyApi, FakeUser
from tests.fakes.clock import CountingRandomness, FixedClock
from tests.fakes.storage import (
    FakeApiKeyStore,
    FakeConnectionDirectory,
    FakeDatabase,
    ScriptedChangeFeed,
)

REDIRECT_URI = "https://app.example/oauth/calendly/callback"
CALLBACK_BASE = "https://app.example/webhooks/calendly"
APP_KEY = Secret("app-level-signing-key")


@dataclass
class Core:
    clock: FixedClock
    random: CountingRandomness
    calendly: FakeCalendlyApi
    db: FakeDatabase
    start_connect: StartConnect
    complete_connect: CompleteConnect
    reconnect: Reconnect
    disconnect: Disconnect
    tokens: RefreshAccessToken
    ensure_subscription: EnsureSubscription
    handle_webhook: HandleWebhookEvent
    status: GetConnectionStatus
    meetings: ListMeetings
    sync: SyncMeetings
    complete_meetings: CompleteMeetings
    maintain: MaintainConnection
    # The server API: keys (real randomness: keys must look like keys), the host's list, erasure.
    api_keys: FakeApiKeyStore
    create_api_key: CreateApiKey
    revoke_api_key: RevokeApiKey
    authenticate_api_key: AuthenticateApiKey
    list_connections: ListConnections
    erase_user: EraseUser
    changes: ScriptedChangeFeed
    read_changes: ReadChanges

    async def connect(
        self, user_id: str, calendly_user: FakeUser, binding: str = "cookie"
    ) -> CompleteConnectResult:
        """The whole popup round trip, with the person approving as `calendly_user`."""
        started = await self.start_connect(
            StartConnectCommand(user_id=user_id, browser_binding=binding)
        )
        query = parse_qs(urlsplit(started.authorization_url).query)
        code = self.calendly.issue_code(
            calendly_user, query["code_challenge"][0], query["redirect_uri"][0]
        )
        return await self.complete_connect(
            CompleteConnectCommand(state=started.state, code=code, browser_binding=binding)
        )


def build_core() -> Core:
    clock = FixedClock()
    random = CountingRandomness()
    calendly = FakeCalendlyApi(clock=clock)
    db = FakeDatabase()
    uow = db.factory()
    tokens = RefreshAccessToken(uow, calendly, clock)
    ensure = EnsureSubscription(uow, calendly, tokens, clock, random, CALLBACK_BASE)
    start = StartConnect(uow, calendly, clock, random, REDIRECT_URI)
    disconnect = Disconnect(uow, calendly, tokens, clock)
    api_keys = FakeApiKeyStore()
    changes = ScriptedChangeFeed()
    return Core(
        clock=clock,
        random=random,
        calendly=calendly,
        db=db,
        start_connect=start,
        complete_connect=CompleteConnect(uow, calendly, clock, random, ensure, REDIRECT_URI),
        reconnect=Reconnect(uow, calendly, tokens, ensure, start, clock),
        disconnect=disconnect,
        tokens=tokens,
        ensure_subscription=ensure,
        handle_webhook=HandleWebhookEvent(
            UnitOfWorkLedger(uow), MsgspecWebhookDecoder(), clock, [APP_KEY]
        ),
        status=GetConnectionStatus(uow),
        meetings=ListMeetings(uow),
        sync=(sync := SyncMeetings(uow, calendly, tokens, clock)),
        complete_meetings=(complete := CompleteMeetings(uow, calendly, tokens)),
        maintain=MaintainConnection(
            uow, tokens, ensure, sync, clock, calendly=calendly, complete_meetings=complete
        ),
        api_keys=api_keys,
        create_api_key=CreateApiKey(api_keys, clock, SecretsRandomness()),
        revoke_api_key=RevokeApiKey(api_keys, clock),
        authenticate_api_key=AuthenticateApiKey(api_keys, clock),
        list_connections=ListConnections(FakeConnectionDirectory(db)),
        changes=changes,
        read_changes=ReadChanges(changes),
        erase_user=EraseUser(uow, disconnect),
    )

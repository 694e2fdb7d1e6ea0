-- The core schema: connections, OAuth round trips, meetings, webhook deliveries.
-- Every per-user table has row-level security, FORCEd so that even the owner obeys it; the
-- tenant is set per transaction with set_config('app.user_id', <user id>, true).
-- Privileges for the runtime role are granted by the migrator after the files ran.

CREATE FUNCTION app_tenant() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '') $$;

-- ------------------------------------------------------------ connections
CREATE TABLE calendar_connections (
    id                         uuid PRIMARY KEY,
    user_id                    text NOT NULL,
    provider                   text NOT NULL DEFAULT 'calendly',
    status                     text NOT NULL
        CHECK (status IN ('active', 'needs_reauth', 'disconnected')),
    -- The seed system's flag, kept for the host app's queries; derived, never written.
    is_active                  boolean GENERATED ALWAYS AS (status = 'active') STORED,
    calendly_user_uri          text,
    calendly_organization_uri  text,
    provider_account_email     text,
    calendly_user_name         text,
    -- AES-GCM blobs (adapters/crypto.py) with the key id inside; never clear text.
    access_token_enc           bytea,
    refresh_token_enc          bytea,
    token_expires_at           timestamptz,
    webhook_status             text NOT NULL DEFAULT 'missing'
        CHECK (webhook_status IN ('active', 'unavailable_plan', 'disabled', 'missing')),
    webhook_subscription_uri   text,
    webhook_signing_key_enc    bytea,
    -- Path segment of this connection's own callback URL.
    webhook_token              text NOT NULL UNIQUE,
    last_error                 text,
    version                    bigint NOT NULL DEFAULT 1,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, provider),
    CONSTRAINT active_has_tokens CHECK (
        status <> 'active' OR (access_token_enc IS NOT NULL AND refresh_token_enc IS NOT NULL)
    ),
    CONSTRAINT disconnected_keeps_no_secrets CHECK (
        status <> 'disconnected' OR (
            access_token_enc IS NULL AND refresh_token_enc IS NULL
            AND webhook_signing_key_enc IS NULL
        )
    )
);

-- One app user per Calendly account: webhooks must route to exactly one user.
CREATE UNIQUE INDEX calendar_connections_one_user_per_account
    ON calendar_connections (calendly_user_uri)
    WHERE status <> 'disconnected';

ALTER TABLE calendar_connections ENABLE ROW LEVEL SECURITY;
ALTER TABLE calendar_connections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON calendar_connections
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());

-- Webhook routing happens before the tenant is known, so it reads this small table, which
-- holds no personal data beyond ids: anyone may read it, only the tenant may change its row.
CREATE TABLE calendly_webhook_routes (
    webhook_token      text PRIMARY KEY,
    calendly_user_uri  text UNIQUE,
    user_id            text NOT NULL,
    connection_id      uuid NOT NULL UNIQUE
        REFERENCES calendar_connections (id) ON DELETE CASCADE
);
ALTER TABLE calendly_webhook_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE calendly_webhook_routes FORCE ROW LEVEL SECURITY;
CREATE POLICY anyone_reads ON calendly_webhook_routes FOR SELECT USING (true);
CREATE POLICY tenant_inserts ON calendly_webhook_routes FOR INSERT
    WITH CHECK (user_id = app_tenant());
CREATE POLICY tenant_updates ON calendly_webhook_routes FOR UPDATE
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());
CREATE POLICY tenant_deletes ON calendly_webhook_routes FOR DELETE
    USING (user_id = app_tenant());

-- Keep the route in step with its connection: present while connected, gone otherwise.
CREATE FUNCTION sync_webhook_route() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM calendly_webhook_routes WHERE connection_id = NEW.id;
    IF NEW.status <> 'disconnected' THEN
        INSERT INTO calendly_webhook_routes (webhook_token, calendly_user_uri, user_id, connection_id)
        VALUES (NEW.webhook_token, NEW.calendly_user_uri, NEW.user_id, NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER calendar_connections_route
    AFTER INSERT OR UPDATE OF status, webhook_token, calendly_user_uri, user_id
    ON calendar_connections
    FOR EACH ROW EXECUTE FUNCTION sync_webhook_route();

-- --------------------------------------------------------- OAuth round trips
-- Found by their unguessable `state` (256 bits) before any tenant is known: the state value is
-- the capability, so the policy lets the runtime role reach any row by it.
CREATE TABLE calendly_oauth_states (
    state              text PRIMARY KEY,
    user_id            text NOT NULL,
    code_verifier_enc  bytea NOT NULL,
    browser_binding    text,
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL
);
CREATE INDEX calendly_oauth_states_expires_at ON calendly_oauth_states (expires_at);
ALTER TABLE calendly_oauth_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE calendly_oauth_states FORCE ROW LEVEL SECURITY;
CREATE POLICY found_by_state ON calendly_oauth_states USING (true) WITH CHECK (true);

-- ------------------------------------------------------------------ meetings
CREATE SEQUENCE meeting_change_seq;

CREATE TABLE meetings (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        text NOT NULL,
    connection_id  uuid NOT NULL REFERENCES calendar_connections (id),
    event_uri      text NOT NULL,
    name           text,
    start_time     timestamptz,
    end_time       timestamptz,
    status         text NOT NULL CHECK (status IN ('active', 'canceled')),
    location       jsonb,
    cancellation   jsonb,
    -- Grows with every change: the cursor live updates resume from.
    change_seq     bigint NOT NULL DEFAULT nextval('meeting_change_seq'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, event_uri)
);
CREATE INDEX meetings_by_start
    ON meetings (user_id, (coalesce(start_time, 'infinity'::timestamptz)), id);
CREATE INDEX meetings_by_change ON meetings (user_id, change_seq);
ALTER TABLE meetings ENABLE ROW LEVEL SECURITY;
ALTER TABLE meetings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON meetings
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());

CREATE TABLE meeting_invitees (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             text NOT NULL,
    connection_id       uuid NOT NULL,
    meeting_id          uuid NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    invitee_uri         text NOT NULL,
    email               text,
    name                text,
    timezone            text,
    status              text NOT NULL CHECK (status IN ('active', 'canceled')),
    cancellation        jsonb,
    rescheduled         boolean NOT NULL DEFAULT false,
    old_invitee_uri     text,
    new_invitee_uri     text,
    no_show             boolean NOT NULL DEFAULT false,
    no_show_changed_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, invitee_uri)
);
CREATE INDEX meeting_invitees_meeting ON meeting_invitees (meeting_id);
ALTER TABLE meeting_invitees ENABLE ROW LEVEL SECURITY;
ALTER TABLE meeting_invitees FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON meeting_invitees
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());

-- -------------------------------------------------------- webhook deliveries
-- The seed system's table, extended: who it belonged to and what became of it. The unique
-- constraint on event_id is the deduplication (its index also serves look-ups by event_id).
CREATE TABLE calendly_webhook_events (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id       text UNIQUE NOT NULL,
    event_type     text NOT NULL,
    processed_at   timestamptz DEFAULT now(),
    payload        jsonb,
    created_at     timestamptz DEFAULT now(),
    -- NULL for deliveries no connection could be found for (visible to operators only).
    user_id        text,
    connection_id  uuid,
    outcome        text NOT NULL CHECK (outcome IN ('applied', 'ignored', 'unusable')),
    reason         text,
    -- The body as received when it is not storable as jsonb.
    raw_payload    bytea
);
CREATE INDEX calendly_webhook_events_created_at ON calendly_webhook_events (created_at);
ALTER TABLE calendly_webhook_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE calendly_webhook_events FORCE ROW LEVEL SECURITY;
-- INSERT ... ON CONFLICT checks new rows against the SELECT policy too, so a delivery no user
-- could be found for is readable where no tenant is set (the webhook path, operators), and
-- never from inside any user's tenant.
CREATE POLICY tenant_reads ON calendly_webhook_events FOR SELECT
    USING (user_id = app_tenant() OR (user_id IS NULL AND app_tenant() IS NULL));
CREATE POLICY tenant_or_unrouted_inserts ON calendly_webhook_events FOR INSERT
    WITH CHECK (user_id IS NULL OR user_id = app_tenant());

-- Host webhooks (issue 13; ARCHITECTURE.md, DR-32, DR-34): sent from the change log (0008), which
-- already is the transactional outbox. No row per delivery: a position per endpoint in the feed
-- (how far its streams were fanned out) and, per (endpoint, user), how far that user's changes
-- are known (`head_seq`) and delivered (`sent_seq`). A rolled-back change never reaches the log,
-- so it is never sent; a committed one is below some later fan-out's horizon, so never lost.

-- The endpoints, upserted from HOST_WEBHOOK_URL / HOST_WEBHOOK_EVENTS when the dispatcher starts
-- (their secrets stay in the environment). Not keyed by a user: reachable only where no tenant
-- is set, like the API keys (0007).
CREATE TABLE host_webhook_endpoints (
    name             text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    url              text NOT NULL,
    -- Patterns ('meeting.*') or exact event names; empty: every event.
    event_types      text[] NOT NULL DEFAULT '{}',
    -- The position in change_log up to which this endpoint's streams were fanned out.
    fan_xid          xid8 NOT NULL,
    fan_id           bigint NOT NULL DEFAULT 0,
    disabled_at      timestamptz,
    disabled_reason  text,
    throttled_until  timestamptz,
    last_error       text,
    last_success_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE host_webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE host_webhook_endpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY outside_any_tenant ON host_webhook_endpoints
    USING (app_tenant() IS NULL) WITH CHECK (app_tenant() IS NULL);

-- One stream per (endpoint, user): that user's changes go out one at a time, in user_seq order.
CREATE TABLE host_webhook_streams (
    endpoint         text NOT NULL REFERENCES host_webhook_endpoints (name) ON DELETE CASCADE,
    user_id          text NOT NULL,
    head_seq         bigint NOT NULL,            -- the highest user_seq fanned out
    sent_seq         bigint NOT NULL DEFAULT 0,  -- the last delivered (or not asked for)
    attempts         int NOT NULL DEFAULT 0,     -- failures in a row
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    failing_since    timestamptz,
    parked_at        timestamptz,
    lease_owner      text,
    lease_until      timestamptz,
    last_error       text,
    PRIMARY KEY (endpoint, user_id)
);
CREATE INDEX host_webhook_streams_due ON host_webhook_streams (endpoint, next_attempt_at)
    WHERE sent_seq < head_seq AND parked_at IS NULL;
ALTER TABLE host_webhook_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE host_webhook_streams FORCE ROW LEVEL SECURITY;
-- The dispatcher works across tenants with the host scope (0007) and no tenant; a user's
-- transaction (an erasure) sees that user's streams only.
CREATE POLICY host_dispatches ON host_webhook_streams
    USING (app_scope() = 'host' AND app_tenant() IS NULL)
    WITH CHECK (app_scope() = 'host' AND app_tenant() IS NULL);
CREATE POLICY tenant_only ON host_webhook_streams
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());

-- A user's changes in order, for a stream's pending reads and for replay.
CREATE INDEX change_log_by_user_time ON change_log (user_id, created_at);


-- The host notifications of 0003 are replaced by these webhooks (connection.needs_reauth,
-- .recovered, .webhooks_disabled, .webhooks_unavailable_plan come from the change log now):
-- nothing writes the old outbox any more, and what it still held is dropped. The table itself
-- stays for one release (erasure still lists it) and goes in the next migration.
CREATE OR REPLACE FUNCTION schedule_maintenance() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status = 'disconnected' THEN
        DELETE FROM connection_maintenance WHERE connection_id = NEW.id;
    ELSE
        INSERT INTO connection_maintenance (connection_id, user_id, refresh_due)
        VALUES (NEW.id, NEW.user_id, NEW.token_expires_at)
        ON CONFLICT (connection_id) DO UPDATE SET
            refresh_due = EXCLUDED.refresh_due,
            retry_at = CASE
                WHEN connection_maintenance.refresh_due IS DISTINCT FROM EXCLUDED.refresh_due
                    THEN NULL
                ELSE connection_maintenance.retry_at END;
        -- A repaired or changed subscription, another account, or a connection that came
        -- back: reconcile now, so whatever was missed meanwhile appears.
        IF TG_OP = 'UPDATE' AND (
            OLD.status IS DISTINCT FROM NEW.status
            OR OLD.webhook_status IS DISTINCT FROM NEW.webhook_status
            OR OLD.webhook_subscription_uri IS DISTINCT FROM NEW.webhook_subscription_uri
            OR OLD.calendly_user_uri IS DISTINCT FROM NEW.calendly_user_uri
        ) THEN
            UPDATE connection_maintenance SET sync_due = now(), retry_at = NULL
            WHERE connection_id = NEW.id;
        END IF;
    END IF;
    RETURN NULL;
END
$$;
DELETE FROM host_notifications;

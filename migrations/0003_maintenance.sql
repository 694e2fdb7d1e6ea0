-- Maintenance: what each connection needs next, claimed with a lease so that any number of
-- workers share the work and never handle one connection at the same time; a crashed
-- worker's lease simply runs out. The table holds ids and times only; workers read it across
-- tenants before acting as the connection's user, hence the permissive policy.
CREATE TABLE connection_maintenance (
    connection_id     uuid PRIMARY KEY REFERENCES calendar_connections (id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    -- The token's expiry: refreshed a margin before it.
    refresh_due       timestamptz,
    subscription_due  timestamptz NOT NULL DEFAULT now(),
    sync_due          timestamptz NOT NULL DEFAULT now(),
    -- When the last reconciliation with Calendly finished (NULL: never, do a full backfill).
    synced_at         timestamptz,
    lease_owner       text,
    lease_until       timestamptz,
    failures          integer NOT NULL DEFAULT 0,
    last_error        text,
    last_run_at       timestamptz
);
CREATE INDEX connection_maintenance_due
    ON connection_maintenance (least(refresh_due, subscription_due, sync_due));
ALTER TABLE connection_maintenance ENABLE ROW LEVEL SECURITY;
ALTER TABLE connection_maintenance FORCE ROW LEVEL SECURITY;
CREATE POLICY workers_share ON connection_maintenance USING (true) WITH CHECK (true);

-- Signals to the host application (optional outbound webhook), written in the same
-- transaction as the change, delivered by the worker with retries.
CREATE TABLE host_notifications (
    id               bigserial PRIMARY KEY,
    user_id          text NOT NULL,
    kind             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text
);
CREATE INDEX host_notifications_pending ON host_notifications (next_attempt_at)
    WHERE delivered_at IS NULL;
ALTER TABLE host_notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE host_notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY workers_share ON host_notifications USING (true) WITH CHECK (true);

-- Workers say they are alive (the doctor reads it).
CREATE TABLE worker_heartbeats (
    worker_id   text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE worker_heartbeats ENABLE ROW LEVEL SECURITY;
ALTER TABLE worker_heartbeats FORCE ROW LEVEL SECURITY;
CREATE POLICY workers_share ON worker_heartbeats USING (true) WITH CHECK (true);

CREATE FUNCTION schedule_maintenance() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status = 'disconnected' THEN
        DELETE FROM connection_maintenance WHERE connection_id = NEW.id;
    ELSE
        INSERT INTO connection_maintenance (connection_id, user_id, refresh_due)
        VALUES (NEW.id, NEW.user_id, NEW.token_expires_at)
        ON CONFLICT (connection_id) DO UPDATE SET refresh_due = EXCLUDED.refresh_due;
        -- A repaired or changed subscription, another account, or a connection that came
        -- back: reconcile now, so whatever was missed meanwhile appears.
        IF TG_OP = 'UPDATE' AND (
            OLD.status IS DISTINCT FROM NEW.status
            OR OLD.webhook_status IS DISTINCT FROM NEW.webhook_status
            OR OLD.webhook_subscription_uri IS DISTINCT FROM NEW.webhook_subscription_uri
            OR OLD.calendly_user_uri IS DISTINCT FROM NEW.calendly_user_uri
        ) THEN
            UPDATE connection_maintenance SET sync_due = now() WHERE connection_id = NEW.id;
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status IS DISTINCT FROM NEW.status THEN
        IF NEW.status = 'needs_reauth' THEN
            INSERT INTO host_notifications (user_id, kind)
            VALUES (NEW.user_id, 'connection.needs_reauth');
        ELSIF NEW.status = 'active' AND OLD.status = 'needs_reauth' THEN
            INSERT INTO host_notifications (user_id, kind)
            VALUES (NEW.user_id, 'connection.recovered');
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.webhook_status IS DISTINCT FROM NEW.webhook_status
       AND NEW.webhook_status IN ('disabled', 'unavailable_plan') THEN
        INSERT INTO host_notifications (user_id, kind)
        VALUES (NEW.user_id, 'connection.webhooks_' || NEW.webhook_status);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER calendar_connections_maintenance
    AFTER INSERT OR UPDATE ON calendar_connections
    FOR EACH ROW EXECUTE FUNCTION schedule_maintenance();

-- Connections that existed before this migration get their row too (from the routes, which
-- every role may read: the connections themselves are behind row-level security).
INSERT INTO connection_maintenance (connection_id, user_id)
SELECT connection_id, user_id FROM calendly_webhook_routes
ON CONFLICT (connection_id) DO NOTHING;

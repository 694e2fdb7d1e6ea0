-- Hardening after an attack review (issue 10).
--
-- 1. A delivery on a connection's own URL is verified with one indexed lookup: the route
--    carries the connection's sealed signing key (AES-GCM, bound to the connection's id and
--    column: readable ciphertext is useless without the service's key), so no tenant, no
--    second query and no decoding of the body happen before the signature holds.
ALTER TABLE calendly_webhook_routes ADD COLUMN signing_key_enc bytea;

CREATE OR REPLACE FUNCTION sync_webhook_route() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM calendly_webhook_routes WHERE connection_id = NEW.id;
    IF NEW.status <> 'disconnected' THEN
        INSERT INTO calendly_webhook_routes
            (webhook_token, calendly_user_uri, user_id, connection_id, signing_key_enc)
        VALUES
            (NEW.webhook_token, NEW.calendly_user_uri, NEW.user_id, NEW.id,
             NEW.webhook_signing_key_enc);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER calendar_connections_route ON calendar_connections;
CREATE TRIGGER calendar_connections_route
    AFTER INSERT OR UPDATE OF status, webhook_token, calendly_user_uri, user_id,
        webhook_signing_key_enc
    ON calendar_connections
    FOR EACH ROW EXECUTE FUNCTION sync_webhook_route();

-- Existing routes get their key. Row-level security is forced on the owner too (and the
-- routes' UPDATE policy needs a tenant), so an owner that is neither superuser nor BYPASSRLS
-- (as on managed Postgres) would update no row at all: it is lifted on both tables for this
-- one statement, inside this migration's transaction, and forced again.
ALTER TABLE calendar_connections NO FORCE ROW LEVEL SECURITY;
ALTER TABLE calendly_webhook_routes NO FORCE ROW LEVEL SECURITY;
UPDATE calendly_webhook_routes r SET signing_key_enc = c.webhook_signing_key_enc
FROM calendar_connections c WHERE c.id = r.connection_id;
ALTER TABLE calendly_webhook_routes FORCE ROW LEVEL SECURITY;
ALTER TABLE calendar_connections FORCE ROW LEVEL SECURITY;

-- Meetings stored before times were checked at decoding may lie outside what the service can
-- read (before year 1 or after 9999 in UTC, or +-infinity). They are read as the nearest
-- bound; storing that bound makes the stored value and the value read the same, so a page
-- cursor taken from such a meeting leads to the next page instead of repeating this one.
ALTER TABLE meetings NO FORCE ROW LEVEL SECURITY;
UPDATE meetings SET
    start_time = least(greatest(start_time, '0001-01-01 00:00:00+00'),
                       '9999-12-31 23:59:59.999999+00'),
    end_time = least(greatest(end_time, '0001-01-01 00:00:00+00'),
                     '9999-12-31 23:59:59.999999+00')
WHERE start_time NOT BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
   OR end_time NOT BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00';
ALTER TABLE meetings FORCE ROW LEVEL SECURITY;

-- 2. Every failed maintenance backs off: a connection is not claimed again before
--    `retry_at` (capped exponential back-off with jitter, computed by the worker). A change
--    its user makes (a reconnect, new tokens, another account) clears it, so a fixed
--    connection is served at once.
ALTER TABLE connection_maintenance ADD COLUMN retry_at timestamptz;

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

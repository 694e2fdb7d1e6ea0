-- The change log (issue 13; ARCHITECTURE.md, DR-31): one row per change a host's back end cares
-- about, written by triggers in the same transaction as the change, so a rolled-back change
-- leaves nothing and a committed one is never missing. `GET /v1/changes` pages through it, and
-- the host webhooks will be sent from it.
--
-- Order and cursors. Rows are read in (xid, id) order, and only rows of transactions older than
-- the reader's snapshot xmin (every transaction below it has ended): a transaction that began
-- before but commits after a read can only add rows above the xmin of that read, so they come
-- after its cursor. A reader therefore sees every committed change exactly once, however
-- writers interleave; a transaction left open somewhere in the cluster delays the feed, it
-- never makes it skip. xid8 never wraps around.
--
-- Per user, `user_seq` numbers the changes 1, 2, 3, ... under the user's advisory lock (the one
-- the meetings upsert holds, 0005), which the service takes before a transaction's first write
-- (DR-33): one user's changes are numbered, and placed in the feed, in the order they commit.
CREATE TABLE change_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    user_id     text NOT NULL,
    user_seq    bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('connection', 'meeting')),
    subject_id  uuid NOT NULL,
    event       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, user_seq)
);
CREATE INDEX change_log_order ON change_log (xid, id);
ALTER TABLE change_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE change_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON change_log
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());
-- The host's feed reads across tenants as the connection list does (0007, DR-30).
CREATE POLICY host_reads ON change_log FOR SELECT
    USING (app_scope() = 'host' AND app_tenant() IS NULL);
CREATE POLICY host_reads ON meetings FOR SELECT
    USING (app_scope() = 'host' AND app_tenant() IS NULL);
CREATE POLICY host_reads ON meeting_invitees FOR SELECT
    USING (app_scope() = 'host' AND app_tenant() IS NULL);

-- How much an event says: within one transaction a subject keeps one row, with the strongest.
CREATE FUNCTION change_weight(event text) RETURNS int
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE event
        WHEN 'connection.updated' THEN 0
        WHEN 'meeting.updated' THEN 0
        WHEN 'meeting.created' THEN 1
        WHEN 'invitee.no_show_set' THEN 2
        WHEN 'invitee.no_show_cleared' THEN 2
        WHEN 'meeting.canceled' THEN 3
        -- A reschedule cancels the old event: "rescheduled" says more than "canceled".
        WHEN 'meeting.rescheduled' THEN 4
        ELSE 5  -- connection events: each says something of its own
    END
$$;

CREATE FUNCTION log_change(p_user_id text, p_kind text, p_subject uuid, p_event text)
    RETURNS void
    LANGUAGE plpgsql
    VOLATILE
    AS $$
DECLARE
    earlier change_log%ROWTYPE;
BEGIN
    SELECT * INTO earlier FROM change_log
    WHERE xid = pg_current_xact_id() AND kind = p_kind AND subject_id = p_subject
    ORDER BY id DESC LIMIT 1;
    IF FOUND THEN
        IF change_weight(p_event) > change_weight(earlier.event) THEN
            UPDATE change_log SET event = p_event WHERE id = earlier.id;
        END IF;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('meetings:' || p_user_id, 0));
    INSERT INTO change_log (user_id, user_seq, kind, subject_id, event)
    SELECT p_user_id, coalesce(max(c.user_seq), 0) + 1, p_kind, p_subject, p_event
    FROM change_log c
    WHERE c.user_id = p_user_id;
END
$$;

CREATE FUNCTION log_connection_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    event text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        event := CASE WHEN NEW.status = 'disconnected' THEN 'connection.updated'
                      ELSE 'connection.connected' END;
    ELSIF NEW.status = 'disconnected' AND OLD.status <> 'disconnected' THEN
        event := 'connection.disconnected';
    ELSIF OLD.status = 'disconnected' AND NEW.status <> 'disconnected' THEN
        event := 'connection.connected';
    ELSIF NEW.status = 'needs_reauth' AND OLD.status <> 'needs_reauth' THEN
        event := 'connection.needs_reauth';
    ELSIF NEW.calendly_user_uri IS DISTINCT FROM OLD.calendly_user_uri
          OR NEW.connected_at IS DISTINCT FROM OLD.connected_at THEN
        event := 'connection.reconnected';  -- another Calendly account (also after needs_reauth)
    ELSIF OLD.status = 'needs_reauth' AND NEW.status = 'active' THEN
        event := 'connection.recovered';
    ELSIF NEW.webhook_status = 'disabled' AND OLD.webhook_status <> 'disabled' THEN
        event := 'connection.webhooks_disabled';
    ELSIF NEW.webhook_status = 'unavailable_plan' AND OLD.webhook_status <> 'unavailable_plan' THEN
        event := 'connection.webhooks_unavailable_plan';
    ELSIF (NEW.webhook_status, NEW.provider_account_email, NEW.calendly_user_name,
           NEW.calendly_organization_uri)
          IS DISTINCT FROM
          (OLD.webhook_status, OLD.provider_account_email, OLD.calendly_user_name,
           OLD.calendly_organization_uri) THEN
        event := 'connection.updated';
    ELSE
        RETURN NULL;  -- tokens refreshed, a subscription renewed: nothing a host sees changed
    END IF;
    PERFORM log_change(NEW.user_id, 'connection', NEW.id, event);
    RETURN NULL;
END
$$;

CREATE TRIGGER calendar_connections_log
    AFTER INSERT OR UPDATE ON calendar_connections
    FOR EACH ROW EXECUTE FUNCTION log_connection_change();

CREATE FUNCTION log_meeting_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    event text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        event := 'meeting.created';
    ELSIF NEW.status = 'canceled' AND OLD.status <> 'canceled' THEN
        event := 'meeting.canceled';
    ELSIF (NEW.name, NEW.start_time, NEW.end_time, NEW.status, NEW.location, NEW.cancellation)
          IS DISTINCT FROM
          (OLD.name, OLD.start_time, OLD.end_time, OLD.status, OLD.location, OLD.cancellation)
          THEN
        event := 'meeting.updated';
    ELSE
        RETURN NULL;  -- a delivery that taught nothing new
    END IF;
    PERFORM log_change(NEW.user_id, 'meeting', NEW.id, event);
    RETURN NULL;
END
$$;

CREATE TRIGGER meetings_log
    AFTER INSERT OR UPDATE ON meetings
    FOR EACH ROW EXECUTE FUNCTION log_meeting_change();

CREATE FUNCTION log_invitee_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    event text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.rescheduled AND NOT OLD.rescheduled THEN
        event := 'meeting.rescheduled';
    ELSIF TG_OP = 'UPDATE' AND NEW.no_show AND NOT OLD.no_show THEN
        event := 'invitee.no_show_set';
    ELSIF TG_OP = 'UPDATE' AND OLD.no_show AND NOT NEW.no_show THEN
        event := 'invitee.no_show_cleared';
    ELSIF TG_OP = 'INSERT' AND NEW.rescheduled THEN
        event := 'meeting.rescheduled';
    ELSIF TG_OP = 'INSERT'
          OR (NEW.status, NEW.email, NEW.name, NEW.cancellation)
             IS DISTINCT FROM (OLD.status, OLD.email, OLD.name, OLD.cancellation) THEN
        event := 'meeting.updated';
    ELSE
        RETURN NULL;
    END IF;
    PERFORM log_change(NEW.user_id, 'meeting', NEW.meeting_id, event);
    RETURN NULL;
END
$$;

CREATE TRIGGER meeting_invitees_log
    AFTER INSERT OR UPDATE ON meeting_invitees
    FOR EACH ROW EXECUTE FUNCTION log_invitee_change();

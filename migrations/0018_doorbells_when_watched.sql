-- The webhook path rings a meeting's doorbell only while someone listens for its user (issue
-- 17; ARCHITECTURE.md, DR-57).
--
-- Every meeting write sent a notification on `calendly_changes` (0002, 0017), and every
-- service process's listener received each one, whether or not a page of that user was open
-- anywhere: most bookings arrive while nobody looks. Measured without it, the webhook path
-- did about 7 % more deliveries a second on 2 processes (less CPU in the service and in
-- Postgres), and the cost grows with the processes listening. A check per row in this
-- trigger cost as much as it saved (an executor started per row), so the webhook path's
-- batches (adapters/postgres/group_commit.py) set `app.doorbells` to 'batch' for their
-- transaction, which silences the trigger, and ring the doorbells of their users that some
-- process listens for in one statement after their writes. Every other writer (the worker,
-- a connect, a delivery written alone after its batch failed) rings here, as before.
--
-- `live_watchers` says who listens: a row per (user, process) while that process has one of
-- the user's live streams open, and a row ('*', process) for a process that wants every
-- meeting's doorbell (the host webhooks' dispatcher). A process commits its row for a user
-- before the user's stream reads anything, then takes and lets go the user's lock
-- (`meetings:<user>`, DR-33), which a batch takes before it writes. So a batch that held the
-- lock when the row committed has committed before the stream's first read, which sees its
-- writes; a batch that takes the lock later runs its doorbell statement after the row
-- committed, and rings. Nothing falls in between.
--
-- Rows of a process that died stay until another process purges them (`seen_at`, refreshed
-- by the living): a stale row costs a doorbell nobody hears, never a missed one. Shared by
-- the service processes like the workers' tables (0003): no tenant's data, user ids only.
CREATE TABLE live_watchers (
    user_id  text NOT NULL,          -- '*': every user
    process  text NOT NULL,          -- the listening process (host:pid:random)
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, process)
);
CREATE INDEX live_watchers_by_process ON live_watchers (process);
ALTER TABLE live_watchers ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_watchers FORCE ROW LEVEL SECURITY;
CREATE POLICY processes_share ON live_watchers USING (true) WITH CHECK (true);

CREATE OR REPLACE FUNCTION log_row_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    change_event text;
    change_kind text := 'meeting';
    subject uuid;
    earlier_id bigint;
    earlier_event text;
BEGIN
    IF TG_TABLE_NAME = 'meetings' THEN
        -- A batch of the webhook path rings its watched users' doorbells itself (see above);
        -- every other writer rings here, as before.
        IF current_setting('app.doorbells', true) IS DISTINCT FROM 'batch' THEN
            PERFORM pg_notify('calendly_changes', 'meetings:' || NEW.user_id);
        END IF;
        subject := NEW.id;
        IF TG_OP = 'INSERT' THEN
            change_event := 'meeting.created';
        ELSIF NEW.status = 'canceled' AND OLD.status <> 'canceled' THEN
            change_event := 'meeting.canceled';
        ELSIF (NEW.name, NEW.start_time, NEW.end_time, NEW.status, NEW.location,
               NEW.cancellation)
              IS DISTINCT FROM
              (OLD.name, OLD.start_time, OLD.end_time, OLD.status, OLD.location,
               OLD.cancellation) THEN
            change_event := 'meeting.updated';
        END IF;  -- else a delivery that taught nothing new
    ELSIF TG_TABLE_NAME = 'meeting_invitees' THEN
        subject := NEW.meeting_id;
        IF TG_OP = 'UPDATE' AND NEW.rescheduled AND NOT OLD.rescheduled THEN
            change_event := 'meeting.rescheduled';
        ELSIF TG_OP = 'UPDATE' AND NEW.no_show AND NOT OLD.no_show THEN
            change_event := 'invitee.no_show_set';
        ELSIF TG_OP = 'UPDATE' AND OLD.no_show AND NOT NEW.no_show THEN
            change_event := 'invitee.no_show_cleared';
        ELSIF TG_OP = 'INSERT' AND NEW.rescheduled THEN
            change_event := 'meeting.rescheduled';
        ELSIF TG_OP = 'INSERT'
              OR (NEW.status, NEW.email, NEW.name, NEW.cancellation)
                 IS DISTINCT FROM (OLD.status, OLD.email, OLD.name, OLD.cancellation) THEN
            change_event := 'meeting.updated';
        END IF;
    ELSE  -- calendar_connections
        change_kind := 'connection';
        subject := NEW.id;
        IF TG_OP = 'INSERT' THEN
            change_event := CASE WHEN NEW.status = 'disconnected' THEN 'connection.updated'
                          ELSE 'connection.connected' END;
        ELSIF NEW.status = 'disconnected' AND OLD.status <> 'disconnected' THEN
            change_event := 'connection.disconnected';
        ELSIF OLD.status = 'disconnected' AND NEW.status <> 'disconnected' THEN
            change_event := 'connection.connected';
        ELSIF NEW.status = 'needs_reauth' AND OLD.status <> 'needs_reauth' THEN
            change_event := 'connection.needs_reauth';
        ELSIF NEW.calendly_user_uri IS DISTINCT FROM OLD.calendly_user_uri
              OR NEW.connected_at IS DISTINCT FROM OLD.connected_at THEN
            change_event := 'connection.reconnected';  -- another Calendly account
        ELSIF OLD.status = 'needs_reauth' AND NEW.status = 'active' THEN
            change_event := 'connection.recovered';
        ELSIF NEW.webhook_status = 'disabled' AND OLD.webhook_status <> 'disabled' THEN
            change_event := 'connection.webhooks_disabled';
        ELSIF NEW.webhook_status = 'unavailable_plan'
              AND OLD.webhook_status <> 'unavailable_plan' THEN
            change_event := 'connection.webhooks_unavailable_plan';
        ELSIF (NEW.webhook_status, NEW.provider_account_email, NEW.calendly_user_name,
               NEW.calendly_organization_uri)
              IS DISTINCT FROM
              (OLD.webhook_status, OLD.provider_account_email, OLD.calendly_user_name,
               OLD.calendly_organization_uri) THEN
            change_event := 'connection.updated';
        END IF;  -- else tokens refreshed, a subscription renewed: nothing a host sees changed
    END IF;
    IF change_event IS NULL THEN
        RETURN NULL;
    END IF;

    SELECT c.id, c.event INTO earlier_id, earlier_event FROM change_log c
    WHERE c.xid = pg_current_xact_id() AND c.kind = change_kind
      AND c.subject_id = subject
    ORDER BY c.id DESC LIMIT 1;
    IF FOUND THEN
        IF change_weight(change_event) > change_weight(earlier_event) THEN
            UPDATE change_log SET event = change_event WHERE id = earlier_id;
        END IF;
        RETURN NULL;
    END IF;
    -- The user's lock orders the numbers with the commits (DR-33); the service holds it
    -- already, so taking it here costs nothing then.
    PERFORM pg_advisory_xact_lock(hashtextextended('meetings:' || NEW.user_id, 0));
    WITH numbered AS (
        INSERT INTO change_log_users AS u (user_id, last_seq) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET last_seq = u.last_seq + 1
        RETURNING u.last_seq
    )
    INSERT INTO change_log (user_id, user_seq, kind, subject_id, event)
    SELECT NEW.user_id, numbered.last_seq, change_kind, subject, change_event
    FROM numbered;
    RETURN NULL;
END
$$;

-- The change log and the doorbell of a meeting write, in one trigger function without nested
-- calls (issue 17; ARCHITECTURE.md, DR-53).
--
-- A booking fired four PL/pgSQL functions per delivery: the meeting's log trigger and its
-- doorbell trigger, the invitee's log trigger, and `log_change` twice, each call of which is a
-- statement of its caller (`PERFORM log_change(...)`: an executor started, a function entered).
-- Now one function, `log_row_change`, serves the three tables that feed the change log. It
-- decides the event by each table's own rules (unchanged from 0008), then logs it as
-- `log_change` did (0011): within one transaction a subject keeps one row, with the strongest
-- event (`change_weight`); otherwise the user's next number from `change_log_users`, taken and
-- used in one statement. A meeting's doorbell (0002) rings from the same call, on every insert
-- and update as before. Connections keep their own doorbell trigger (it fires on a few columns
-- only). What the triggers write is the same as before, row for row.
CREATE FUNCTION log_row_change() RETURNS trigger
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
        PERFORM pg_notify('calendly_changes', 'meetings:' || NEW.user_id);
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

DROP TRIGGER meetings_notify ON meetings;
DROP TRIGGER meetings_log ON meetings;
CREATE TRIGGER meetings_log
    AFTER INSERT OR UPDATE ON meetings
    FOR EACH ROW EXECUTE FUNCTION log_row_change();
DROP TRIGGER meeting_invitees_log ON meeting_invitees;
CREATE TRIGGER meeting_invitees_log
    AFTER INSERT OR UPDATE ON meeting_invitees
    FOR EACH ROW EXECUTE FUNCTION log_row_change();
DROP TRIGGER calendar_connections_log ON calendar_connections;
CREATE TRIGGER calendar_connections_log
    AFTER INSERT OR UPDATE ON calendar_connections
    FOR EACH ROW EXECUTE FUNCTION log_row_change();
DROP FUNCTION log_meeting_change();
DROP FUNCTION log_invitee_change();
DROP FUNCTION log_connection_change();
DROP FUNCTION log_change(text, text, uuid, text);

-- Live updates: a doorbell per change, fanned out by every service process that LISTENs.
-- The payload names only the kind of change and the user: pages then ask for the changes
-- through the API, under row-level security. Identical notifications within a transaction are
-- folded by Postgres, and all are delivered only when the transaction commits.

CREATE FUNCTION notify_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('calendly_changes', TG_ARGV[0] || ':' || NEW.user_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER meetings_notify
    AFTER INSERT OR UPDATE ON meetings
    FOR EACH ROW EXECUTE FUNCTION notify_change('meetings');

CREATE TRIGGER calendar_connections_notify
    AFTER INSERT OR UPDATE OF status, webhook_status, calendly_user_uri, provider_account_email,
        last_error
    ON calendar_connections
    FOR EACH ROW EXECUTE FUNCTION notify_change('connection');

-- Meetings completed from Calendly when a delivery lacks their details (issue 16, DR-47).
--
-- A delivery in Calendly's pre-2022 shape carries the invitee and only the URI of its event: no
-- name, times, location or status. The delivery is recorded and acknowledged as any other; the
-- meeting row says that its details are wanted (`details_requested_at`, the time of the latest
-- such delivery), and the connection says that a worker has something to fetch (`enrich_due`).
-- The worker reads each wanted event (`GET /scheduled_events/{uuid}`), merges it by the same
-- rules as a delivery, and clears the request only if no later delivery renewed it meanwhile
-- (the request's time is compared, so a cancel that arrives while the event is being read is
-- read again). An event Calendly will not show is marked `details_error` and not asked again.
-- A read that fails otherwise (Calendly's 5xx, an answer that cannot be read) is retried for
-- that meeting alone, 5 s doubling to 30 minutes (`details_failures`, `details_retry_at`), its
-- error shown meanwhile: one bad event never holds up the others or the connection's work.
ALTER TABLE meetings
    ADD COLUMN details_requested_at timestamptz,
    ADD COLUMN details_error text,
    ADD COLUMN details_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN details_retry_at timestamptz;
-- The worker's read of one connection's wanted events: only rows that want something.
CREATE INDEX meetings_wanting_details
    ON meetings (connection_id, details_requested_at) WHERE details_requested_at IS NOT NULL;

-- `due_at` (0014) gains the fourth kind of work. A generated column's expression cannot be
-- altered: it is dropped with its index and added again (one rewrite of the table).
DROP INDEX connection_maintenance_due_at;
ALTER TABLE connection_maintenance DROP COLUMN due_at;
ALTER TABLE connection_maintenance
    ADD COLUMN enrich_due timestamptz,
    ADD COLUMN due_at timestamptz GENERATED ALWAYS AS (
        greatest(least(subscription_due, sync_due, grant_due, enrich_due), retry_at, lease_until)
    ) STORED;
CREATE INDEX connection_maintenance_due_at ON connection_maintenance (due_at);

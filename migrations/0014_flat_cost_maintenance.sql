-- Maintenance at flat cost (issue 15, ARCHITECTURE.md DR-45).
--
-- 1. The claim reads one stored, indexed column: `due_at`, the moment the row next wants a
--    worker. Postgres computes it from its inputs on every write (a generated column), so no
--    code path can leave it wrong: the soonest of the three kinds of work, but not before a
--    back-off (`retry_at`) or a live lease (`lease_until`) ends. GREATEST and LEAST skip NULLs.
--    The claim is then `WHERE due_at <= now ORDER BY due_at LIMIT n FOR UPDATE SKIP LOCKED`
--    on the index: the same few index pages at a thousand rows or a million.
-- 2. The token's expiry (`refresh_due`) no longer schedules anything: a token is refreshed when
--    a call needs it (Calendly's refresh tokens do not expire while unused). What replaces the
--    proactive refresh is `grant_due`: proof, at least daily, that Calendly still honours the
--    grant (the refresh a call needs anyway, else one cheap read), so a revoked grant shows as
--    `needs_reauth` within a day even for a user who never opens the page.
-- 3. The webhook endpoint's own record of its health: every serving process says every few
--    seconds that it answers (`webhook_health`); a gap in that, or a 5xx answered to Calendly,
--    becomes a `webhook_outages` row, after which every connection with webhooks has its
--    subscription checked and its meetings reconciled, spread over a few minutes (a
--    subscription Calendly disabled while we failed is recreated, the gap is backfilled).
--
-- Adding the generated column rewrites the table once (an exclusive lock for the rewrite: a
-- few seconds per million rows).
ALTER TABLE connection_maintenance
    ADD COLUMN grant_due timestamptz NOT NULL DEFAULT now(),
    -- Whether the connection's webhooks worked at its last pass (so an outage's sweep leaves
    -- free-plan connections, which it cannot help, alone); until a first pass, assumed so.
    ADD COLUMN webhooks boolean NOT NULL DEFAULT true,
    ADD COLUMN due_at timestamptz GENERATED ALWAYS AS (
        greatest(least(subscription_due, sync_due, grant_due), retry_at, lease_until)
    ) STORED;
-- Existing connections have their first grant check spread over the next day, not all now.
UPDATE connection_maintenance SET grant_due = now() + random() * interval '1 day';
DROP INDEX connection_maintenance_due;
CREATE INDEX connection_maintenance_due_at ON connection_maintenance (due_at);

CREATE TABLE webhook_health (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    -- The last moment some serving process was known to take deliveries.
    healthy_until  timestamptz NOT NULL
);
ALTER TABLE webhook_health ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_health FORCE ROW LEVEL SECURITY;
CREATE POLICY workers_share ON webhook_health USING (true) WITH CHECK (true);

CREATE TABLE webhook_outages (
    id           bigserial PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    -- Why: 'unreachable' (no process said it answered) or 'errors' (5xx answered).
    cause        text NOT NULL,
    -- The follow-up sweep, in batches by connection id: done up to `swept_after`, all done
    -- at `swept_at`. An outage that grows again starts its sweep over.
    swept_after  uuid,
    swept_at     timestamptz
);
CREATE INDEX webhook_outages_unswept ON webhook_outages (ended_at) WHERE swept_at IS NULL;
ALTER TABLE webhook_outages ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_outages FORCE ROW LEVEL SECURITY;
CREATE POLICY workers_share ON webhook_outages USING (true) WITH CHECK (true);

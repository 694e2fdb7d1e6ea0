-- Bounded storage (issue 15; ARCHITECTURE.md, DR-41): the worker deletes recorded deliveries
-- older than WEBHOOK_PAYLOAD_RETENTION_DAYS (their event ids, the dedup keys, are kept at least
-- as long as Calendly may still deliver the same event again: the payload alone goes first when
-- the retention is shorter than that) and expired OAuth states. It runs with the 'retention'
-- scope (0010) and no tenant; the host scope stays one that deletes nothing.
CREATE POLICY retention_reads ON calendly_webhook_events FOR SELECT
    USING (app_scope() = 'retention' AND app_tenant() IS NULL);
-- Emptying a payload is all this scope may do to a row.
CREATE POLICY retention_strips ON calendly_webhook_events FOR UPDATE
    USING (app_scope() = 'retention' AND app_tenant() IS NULL)
    WITH CHECK (app_scope() = 'retention' AND app_tenant() IS NULL
                AND payload IS NULL AND raw_payload IS NULL);
CREATE POLICY retention_prunes ON calendly_webhook_events FOR DELETE
    USING (app_scope() = 'retention' AND app_tenant() IS NULL);

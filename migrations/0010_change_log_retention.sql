-- The change log's retention (issue 13; ARCHITECTURE.md, DR-35): the worker deletes rows older
-- than CHANGE_LOG_RETENTION_DAYS, a prefix of the feed at a time, and never a row a host webhook
-- stream still needs. How far it pruned is kept here, so that `GET /v1/changes` can tell a cursor
-- from before that position (410 `cursor-expired`) instead of silently skipping what was pruned.

-- One row: the feed position (in (xid, id) order) up to which every row has been deleted.
CREATE TABLE change_log_pruned (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    xid       xid8 NOT NULL DEFAULT '0',
    id        bigint NOT NULL DEFAULT 0,
    pruned_at timestamptz
);
INSERT INTO change_log_pruned DEFAULT VALUES;
-- Not keyed by a user: reachable only where no tenant is set, like the endpoints (0009).
ALTER TABLE change_log_pruned ENABLE ROW LEVEL SECURITY;
ALTER TABLE change_log_pruned FORCE ROW LEVEL SECURITY;
CREATE POLICY outside_any_tenant ON change_log_pruned
    USING (app_tenant() IS NULL) WITH CHECK (app_tenant() IS NULL);

-- Pruning runs with its own scope, 'retention', and no tenant: it reads the log and the streams
-- across tenants and deletes from the log. The host scope (0007) stays one that deletes nothing.
CREATE POLICY retention_reads ON change_log FOR SELECT
    USING (app_scope() = 'retention' AND app_tenant() IS NULL);
CREATE POLICY retention_prunes ON change_log FOR DELETE
    USING (app_scope() = 'retention' AND app_tenant() IS NULL);
CREATE POLICY retention_reads ON host_webhook_streams FOR SELECT
    USING (app_scope() = 'retention' AND app_tenant() IS NULL);

-- "Does any stream of this user still need this row": by user.
CREATE INDEX host_webhook_streams_by_user ON host_webhook_streams (user_id, sent_seq);

-- Free-plan connections polled often while their user watches (DR-42). A service process with
-- open live streams asks, in one statement per tick for all the users watching there, that
-- their connections be synced again soon: it works with the 'watching' scope and no tenant,
-- reads only the connections the worker polls (active, no webhooks on their plan), and writes
-- only `connection_maintenance` (shared by the workers, 0003). The host scope stays read-only
-- on connections and sees no more than before; a tenant sees only its own, as ever.
CREATE POLICY watching_reads ON calendar_connections FOR SELECT
    USING (app_scope() = 'watching' AND app_tenant() IS NULL
           AND status = 'active' AND webhook_status = 'unavailable_plan');

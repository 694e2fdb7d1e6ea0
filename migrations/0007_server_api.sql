-- The server API for the host's back end (issue 13, first part; ARCHITECTURE.md, DR-30).
--
-- 1. API keys. Not per tenant: the service looks a key up before it knows who is asking, and
--    operators manage them (`calendly-connect api-keys`). Only the SHA-256 of a key is kept
--    (a key is 256 random bits: nothing can be guessed back from its digest), with a short
--    prefix in clear to name it. Reachable only where no tenant is set: a query running as any
--    app user sees no key at all.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- The first 8 characters after `ccsk_`: not secret, shown in lists and logs.
    prefix        text NOT NULL UNIQUE CHECK (prefix ~ '^[A-Za-z0-9_-]{8}$'),
    key_sha256    bytea NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    scope         text NOT NULL CHECK (scope IN ('read', 'write')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Written at most once a minute per key, from memory, never by the request itself.
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY outside_any_tenant ON api_keys
    USING (app_tenant() IS NULL) WITH CHECK (app_tenant() IS NULL);

-- 2. The host's list of every user's connection: the one deliberate read across tenants. A
--    transaction that sets `app.scope` to 'host' (transaction-local, like the tenant) and no
--    tenant may read connections; it can change none (the other commands keep their tenant
--    policy), and a transaction acting as a user still sees only that user's row. Only the
--    dedicated read path sets it, in a READ ONLY transaction, selecting no secret column
--    (adapters/postgres/directory.py).
CREATE FUNCTION app_scope() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.scope', true), '') $$;

CREATE POLICY host_reads ON calendar_connections FOR SELECT
    USING (app_scope() = 'host' AND app_tenant() IS NULL);

-- The list's order, and its keyset cursor.
CREATE INDEX calendar_connections_listing ON calendar_connections (created_at, id);

-- 3. Erasure: a user's recorded deliveries may be deleted as that user (they could only be
--    read and inserted until now). Deliveries no user could be found for stay an operator's.
CREATE POLICY tenant_deletes ON calendly_webhook_events FOR DELETE
    USING (user_id = app_tenant());

-- Webhook routes remembered by a service process, checked where they are used (issue 17;
-- ARCHITECTURE.md, DR-54).
--
-- A service process remembers the routes it found by a connection's token, so that most
-- deliveries need no lookup of their own before they are written. A remembered route may have
-- changed since (the connection disconnected, reconnected with a new signing key, or its
-- token went to another connection): the transaction that writes a delivery under it calls this
-- first, after taking the users' locks and before any write. It raises (SQLSTATE CC409) when
-- one of the given routes is no longer stored exactly as given, which rolls the whole
-- transaction back; the service then forgets those routes and handles each of those deliveries
-- again from a route read just now, its signature included.
--
-- The arrays are parallel, one element per route: its token, connection, user, Calendly user
-- URI (NULL for none) and sealed signing key (NULL for none). The sealed key is compared as
-- stored, so a key sealed again (a rotation of the encryption keys) counts as a change too:
-- harmless, the route is read again.
CREATE FUNCTION webhook_routes_unchanged(
    tokens text[], connection_ids uuid[], user_ids text[], uris text[], sealed_keys bytea[]
) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM unnest(tokens, connection_ids, user_ids, uris, sealed_keys)
            AS given (webhook_token, connection_id, user_id, calendly_user_uri, signing_key_enc)
        WHERE NOT EXISTS (
            SELECT 1 FROM calendly_webhook_routes r
            WHERE r.webhook_token = given.webhook_token
              AND r.connection_id = given.connection_id
              AND r.user_id = given.user_id
              AND r.calendly_user_uri IS NOT DISTINCT FROM given.calendly_user_uri
              AND r.signing_key_enc IS NOT DISTINCT FROM given.signing_key_enc
        )
    ) THEN
        RAISE EXCEPTION 'a remembered webhook route has changed'
            USING ERRCODE = 'CC409',
                  HINT = 'Forget the remembered routes and read them again.';
    END IF;
END
$$;

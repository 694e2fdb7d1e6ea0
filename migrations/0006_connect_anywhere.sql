-- Connecting from a page on another origin or behind a path prefix (DR-28).
--
-- A round trip may carry the S256 challenge of a verifier that the page which started it keeps
-- in memory. When the popup comes back without this service's first-party cookie (the page is
-- on another site), the code is handed to that page, which completes the round trip with the
-- verifier and the user's token.
ALTER TABLE calendly_oauth_states ADD COLUMN completion_challenge text;

-- "Connected since": the last time the user connected afresh (first connect, after a
-- disconnect, or with another Calendly account). Rows from before stay NULL and show
-- `created_at`, the best that is known of them; filling them in would rewrite every row.
ALTER TABLE calendar_connections ADD COLUMN connected_at timestamptz;

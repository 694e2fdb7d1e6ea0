-- A user's change numbers are never reused (a review of DR-35; ARCHITECTURE.md, DR-36).
--
-- `user_seq` was the user's highest number still in `change_log` + 1. Once retention pruned every
-- row of a user who had been quiet for two weeks, their next change was numbered 1 again, while
-- their host-webhook streams stood at the old number: nothing of theirs was sent any more, and
-- back ends that keep `sequence` saw it go back. The last number given to each user is now kept
-- here, where pruning never reaches. Erasure keeps it too (a user id and a number, nothing of
-- the user's Calendly): a stream an erasure raced with can never skip the user's next changes.
CREATE TABLE change_log_users (
    user_id   text PRIMARY KEY,
    last_seq  bigint NOT NULL CHECK (last_seq > 0)
);
ALTER TABLE change_log_users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON change_log_users
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());

-- From what is known: the log's numbers and the streams' heads (for users already pruned).
ALTER TABLE change_log NO FORCE ROW LEVEL SECURITY;
ALTER TABLE host_webhook_streams NO FORCE ROW LEVEL SECURITY;
INSERT INTO change_log_users (user_id, last_seq)
SELECT user_id, max(seq) FROM (
    SELECT user_id, max(user_seq) AS seq FROM change_log GROUP BY user_id
    UNION ALL
    SELECT user_id, max(head_seq) AS seq FROM host_webhook_streams
    WHERE head_seq > 0 GROUP BY user_id
) known
GROUP BY user_id;
ALTER TABLE host_webhook_streams FORCE ROW LEVEL SECURITY;
ALTER TABLE change_log FORCE ROW LEVEL SECURITY;
ALTER TABLE change_log_users FORCE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION log_change(p_user_id text, p_kind text, p_subject uuid, p_event text)
    RETURNS void
    LANGUAGE plpgsql
    VOLATILE
    AS $$
DECLARE
    earlier change_log%ROWTYPE;
    next_seq bigint;
BEGIN
    SELECT * INTO earlier FROM change_log
    WHERE xid = pg_current_xact_id() AND kind = p_kind AND subject_id = p_subject
    ORDER BY id DESC LIMIT 1;
    IF FOUND THEN
        IF change_weight(p_event) > change_weight(earlier.event) THEN
            UPDATE change_log SET event = p_event WHERE id = earlier.id;
        END IF;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('meetings:' || p_user_id, 0));
    INSERT INTO change_log_users AS u (user_id, last_seq) VALUES (p_user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_seq = u.last_seq + 1
    RETURNING u.last_seq INTO next_seq;
    INSERT INTO change_log (user_id, user_seq, kind, subject_id, event)
    VALUES (p_user_id, next_seq, p_kind, p_subject, p_event);
END
$$;

-- A meeting's change number from a counter per user, proposed by the statement that writes the
-- meeting (issue 17; ARCHITECTURE.md, DR-52).
--
-- Since 0005 a BEFORE INSERT trigger numbered every proposed row with the user's highest
-- `change_seq` + 1. Postgres answered that `max` by reading every meeting of the user (a bitmap
-- scan of meetings_by_change) whenever its statistics put few rows under one user: after a
-- table grows fast, or for a user with far more meetings than the average. A delivery then
-- cost time in proportion to its user's meetings (1,000 meetings: 0.6 ms, more than the rest of
-- the delivery's SQL). The last number given to each user is now kept here, as change_log_users
-- keeps the change log's (0011): one indexed row, whatever the user's meetings, and a number
-- that is never given twice, even once the user's newest meetings are pruned or erased
-- (an erasure keeps it: a user id and a number, nothing of the user's Calendly).
--
-- The service's meeting upsert (adapters/postgres/meeting_writes.py) takes the next number in
-- the same statement (a CTE), under the user's lock that it holds already. The trigger stays
-- for any other writer (a process on the previous code, a hand-written INSERT), from the same
-- counter, and fires only for a row that comes without a number (decided by its WHEN condition,
-- which costs no function call).
CREATE TABLE meeting_change_users (
    user_id   text PRIMARY KEY,
    last_seq  bigint NOT NULL CHECK (last_seq > 0)
);
ALTER TABLE meeting_change_users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON meeting_change_users
    USING (user_id = app_tenant()) WITH CHECK (user_id = app_tenant());

-- From the numbers given so far. No meeting may be written meanwhile (a writer on the previous
-- code would number one from the old rule after this read): writes wait for this migration.
-- ACCESS EXCLUSIVE at once, the lock the ALTER below takes anyway: a weaker one first would
-- have to be raised later, and a transaction waiting in between could deadlock with it.
LOCK TABLE meetings IN ACCESS EXCLUSIVE MODE;
ALTER TABLE meetings NO FORCE ROW LEVEL SECURITY;
INSERT INTO meeting_change_users (user_id, last_seq)
SELECT user_id, max(change_seq) FROM meetings GROUP BY user_id;
ALTER TABLE meetings FORCE ROW LEVEL SECURITY;
ALTER TABLE meeting_change_users FORCE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION next_meeting_change() RETURNS trigger
    LANGUAGE plpgsql
    VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('meetings:' || NEW.user_id, 0));
    INSERT INTO meeting_change_users AS u (user_id, last_seq) VALUES (NEW.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_seq = u.last_seq + 1
    RETURNING u.last_seq INTO NEW.change_seq;
    RETURN NEW;
END
$$;

DROP TRIGGER meetings_change_seq ON meetings;
CREATE TRIGGER meetings_change_seq
    BEFORE INSERT ON meetings
    FOR EACH ROW WHEN (NEW.change_seq IS NULL) EXECUTE FUNCTION next_meeting_change();

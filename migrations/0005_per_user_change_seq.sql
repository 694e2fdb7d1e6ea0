-- Live-update cursors per user. `meetings.change_seq` (the SSE event id, Last-Event-ID) came
-- from one global sequence, so the gaps between a user's own ids showed how busy everyone else
-- was. From here on each change takes the user's highest change_seq + 1: gap-free per user.
-- Existing values stay as they are, so every cursor a page holds still resumes correctly.
--
-- A BEFORE INSERT trigger numbers the row. The meetings upsert (adapters/postgres/
-- meetings.py, APPLY_CHANGE) sets `change_seq = EXCLUDED.change_seq` on conflict: EXCLUDED
-- carries what BEFORE INSERT triggers made of the proposed row, so an upsert costs one lookup
-- of the user's newest change (an index's last entry, meetings_by_change) whichever way it
-- goes. The trigger takes the per-user advisory lock that the upsert already holds (taking it
-- again is free), so any writer is serialised with the others of its user and one user's
-- changes commit in change_seq order. Its query runs after the lock is held and, being in a
-- VOLATILE function, with a fresh snapshot: it sees every change committed before it.
--
-- Processes still running the previous code name the dropped sequence and fail their meeting
-- writes (Calendly retries the delivery) until they are replaced; none writes a number out of
-- order meanwhile.

CREATE FUNCTION next_meeting_change() RETURNS trigger
    LANGUAGE plpgsql
    VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('meetings:' || NEW.user_id, 0));
    SELECT coalesce(max(m.change_seq), 0) + 1 INTO NEW.change_seq
    FROM meetings m
    WHERE m.user_id = NEW.user_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER meetings_change_seq
    BEFORE INSERT ON meetings
    FOR EACH ROW EXECUTE FUNCTION next_meeting_change();

ALTER TABLE meetings ALTER COLUMN change_seq DROP DEFAULT;
DROP SEQUENCE meeting_change_seq;

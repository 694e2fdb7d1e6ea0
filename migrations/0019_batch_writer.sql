-- The webhook path writes a batch's deliveries with one statement for many users (issue 17;
-- ARCHITECTURE.md, DR-61).
--
-- Row-level security is checked statement by statement against one tenant (`app.user_id`), so
-- the webhook path's batches (adapters/postgres/group_commit.py) ran one statement per
-- delivery, and Postgres built each statement's executor state (every expression and table
-- write of a long CTE) once per delivery: about a quarter of its CPU per delivery. A batch now
-- writes its plain deliveries with one statement per round (at most one delivery per user in
-- each), as the role `calendly_batch_writer`, whose policies admit only the users the batch
-- named in `app.batch_users` (the users whose locks it took first).
--
-- The role, its rights and its policies are made by `migrate` after the files, as the runtime
-- role is (adapters/postgres/migrations.py, `grant_batch_writer`): a role is the cluster's, not
-- the database's, and a migrating user may lack the right to make one or to take one made by
-- another. Without them the service writes each delivery by its own statement, as before, and
-- the doctor says how to mend it. What they need from the schema is here.

-- The users a batch may write, as the batch set them (separated by the unit separator,
-- chr(31), which no user id holds: ids are printable text); NULL outside a batch.
CREATE FUNCTION app_batch_users() RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
        SELECT string_to_array(nullif(current_setting('app.batch_users', true), ''), chr(31))
    $$;

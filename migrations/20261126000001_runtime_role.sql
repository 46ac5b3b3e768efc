-- The least-privilege runtime role: what ingress, workers and the operator commands
-- (`dlq`, `audit`, `grants`, the admin API) connect as in production.
--
-- Migrations run as the OWNER of the tables (`[database] migrate_url`). The owner can
-- always ALTER TABLE audit_log DISABLE TRIGGER, TRUNCATE it or rewrite the chain; the
-- triggers of the first migration only stop a caller that plays by the rules. The
-- services therefore connect as `accessgov_app` (`[database] url`), which owns
-- nothing and holds only the privileges granted below: on audit_log it may read and
-- append, nothing else, so it can neither change history nor switch the triggers off.
--
-- Roles belong to the whole PostgreSQL cluster, databases do not: several accessgov
-- databases (tenants; the test suite's one database per test) share this role and
-- may run this migration at the same moment, so creating it must survive a
-- concurrent creator. It gets no password here (secrets never live in files):
-- `accessgov migrate` sets it from `[database] app_password_env` / `app_password_file`.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'accessgov_app') THEN
        BEGIN
            CREATE ROLE accessgov_app
                LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
        EXCEPTION
            -- Another database of this cluster created it between the check and here.
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    -- A role created beforehand (by a DBA, say) must be as weak as the one above.
    IF EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = 'accessgov_app'
          AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls)
    ) THEN
        RAISE EXCEPTION 'role accessgov_app has SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS'
            USING HINT = 'the runtime role must be a plain login role: ALTER ROLE accessgov_app '
                         'NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS';
    END IF;
    IF pg_has_role('accessgov_app', current_user, 'MEMBER') THEN
        RAISE EXCEPTION 'role accessgov_app is a member of %, the owner of the tables', current_user
            USING HINT = format('REVOKE %I FROM accessgov_app: the runtime role must not act as the owner', current_user);
    END IF;
END
$$;

-- What the services do, table by table (grep src/ for the SQL): nothing more.
--
-- EVERY LATER MIGRATION THAT CREATES A TABLE OR SEQUENCE MUST GRANT ON IT EXPLICITLY,
-- in the same migration, exactly what the services need, to accessgov_app (or they
-- fail with "permission denied" as soon as they touch it; the integration tests run
-- the services as accessgov_app and catch that). `ALTER DEFAULT PRIVILEGES` is not a substitute: it applies only to
-- objects created later by the role named in it (a different migrating role, or a
-- superuser running one migration by hand, silently gets no grants), it would hand
-- out the same privileges to every future table whatever it holds (UPDATE and DELETE
-- on a second append-only table, say), and it hides the grant from the migration
-- that needs it.

-- The audit trail: read and append. No UPDATE, DELETE, TRUNCATE, REFERENCES or
-- TRIGGER, and only the owner may ALTER, DROP or disable its triggers.
GRANT SELECT, INSERT ON audit_log TO accessgov_app;
GRANT USAGE ON SEQUENCE audit_log_seq_seq TO accessgov_app;

-- Worker dedupe: insert, mark the first duplicate.
GRANT SELECT, INSERT, UPDATE ON processed_events TO accessgov_app;
-- The ledger: upsert grants, take and release holds (expiry included).
GRANT SELECT, INSERT, UPDATE ON access_grants TO accessgov_app;
GRANT USAGE ON SEQUENCE access_grants_id_seq TO accessgov_app;
GRANT SELECT, INSERT, DELETE ON grant_holds TO accessgov_app;
-- Per-ticket ordering: upsert.
GRANT SELECT, INSERT, UPDATE ON ticket_progress TO accessgov_app;
-- The dead-letter inbox: the drain inserts, operators mark replayed or discarded
-- (rows lock FOR UPDATE, which needs UPDATE). Nothing deletes a dead letter.
GRANT SELECT, INSERT, UPDATE ON dead_letters TO accessgov_app;
GRANT USAGE ON SEQUENCE dead_letters_id_seq TO accessgov_app;

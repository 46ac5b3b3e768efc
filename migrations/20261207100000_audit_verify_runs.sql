-- Each verification of the audit chain (`accessgov audit verify`, the worker's
-- scheduled check of the chain's tail, the admin API and console): when, by
-- whom, over which rows, and whether the chain was intact. Read by
-- `/metrics` (accessgov_audit_verify_ok) and the console's overview. Not part
-- of the chain itself: a verification changes nothing the chain covers.
CREATE TABLE audit_verify_runs (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text        NOT NULL,
    since_seq     bigint      NOT NULL,
    rows_checked  bigint      NOT NULL,
    last_seq      bigint,
    ok            boolean     NOT NULL,
    broken_seq    bigint,
    broken_reason text
);

-- The services' least-privilege role (see 20261126000001_runtime_role.sql).
GRANT SELECT, INSERT ON audit_verify_runs TO accessgov_app;
GRANT USAGE ON SEQUENCE audit_verify_runs_id_seq TO accessgov_app;

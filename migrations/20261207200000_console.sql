-- The operator console (issue 15).
--
-- 1. Keyset pagination of the audit page: each filter the page offers is an
--    equality on one column, ordered by seq. With (column, seq) the newest page
--    of a filtered view and the 1000th are both one index range scan, whatever
--    the table's size. (`ticket` has its own index already, which the planner
--    combines with the primary key for the few rows a ticket has; `at` ranges
--    use audit_log_at_idx.) Each index is one more entry per appended row.
CREATE INDEX audit_log_subject_seq_idx ON audit_log (subject, seq);
CREATE INDEX audit_log_application_seq_idx ON audit_log (application, seq);
CREATE INDEX audit_log_action_seq_idx ON audit_log (action, seq);

-- 2. "Events today" on the overview: processed events by time.
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);

-- 3. Connection tests ("Test connection": `accessgov connectors test` and the
--    console's button): one row per live application tested, so the overview
--    can show each application's last result. Each is also audited
--    (`connection_tested`, with the operator); this table is the quick index.
CREATE TABLE connection_tests (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    application text        NOT NULL,
    kind        text        NOT NULL,
    actor       text        NOT NULL,
    via         text        NOT NULL,
    ok          boolean     NOT NULL,
    -- ok, config, unauthorized, not_found, transient, permanent
    result      text        NOT NULL,
    latency_ms  bigint,
    error       text
);

CREATE INDEX connection_tests_application_idx ON connection_tests (application, id);

-- The services' least-privilege role (see 20261126000001_runtime_role.sql):
-- tests are recorded and read, never changed.
GRANT SELECT, INSERT ON connection_tests TO accessgov_app;
GRANT USAGE ON SEQUENCE connection_tests_id_seq TO accessgov_app;

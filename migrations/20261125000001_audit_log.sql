-- The audit trail: append-only and hash-chained.
-- Each row's `hash` = sha256(prev_hash || canonical row content); `prev_hash` of the
-- first row is 64 zeros. The application computes hashes under an advisory lock so
-- that concurrent writers cannot fork the chain; `accessgov audit verify` recomputes it.
CREATE TABLE audit_log (
    seq         bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL,
    event_id    uuid,
    ticket      text,
    actor       text,
    action      text        NOT NULL,
    application text,
    subject     text,
    target      text,
    outcome     text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    prev_hash   text        NOT NULL,
    hash        text        NOT NULL UNIQUE
);

CREATE INDEX audit_log_event_id_idx ON audit_log (event_id);
CREATE INDEX audit_log_ticket_idx ON audit_log (ticket);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- The database itself refuses to change history, whoever connects.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows can only be added; corrections are new rows';
END;
$$;

CREATE TRIGGER audit_log_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_refuse_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Intents: every provider call is preceded by a committed intent and followed by
-- a committed result, and no transaction is open during the call.
--
-- The event's decision commits its ledger change (holds: the access that should
-- exist), its audit rows and one intent per provider call. Workers then claim
-- intents (a lease, so a crashed worker's claim expires and is re-run; grants and
-- revokes are idempotent), call the provider with no transaction open, and record
-- the result. Per (application, identity_key, target) intents run in id order, so
-- effects happen in ticket-event order across replicas. A new intent opposite to
-- a still-pending one on the same key cancels both (a revoke catches its grant in
-- the retry ladder before it runs). An intent that cannot succeed is `dead`: its
-- ledger change is undone (`undo`) and its event is dead-lettered for replay.
CREATE TABLE intents (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL,
    ticket       text        NOT NULL,
    application  text        NOT NULL,
    subject      text        NOT NULL,
    identity     jsonb       NOT NULL,
    identity_key text        NOT NULL,
    target       text        NOT NULL,
    access_level text        NOT NULL,
    op           text        NOT NULL CHECK (op IN ('grant', 'revoke')),
    state        text        NOT NULL CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    result       text,
    last_error   text,
    -- the ledger changes of this target to revert if the intent dies
    undo         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- what the audit rows of the result are called (`expired` for expiry events)
    source       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX intents_open_key_idx ON intents (application, identity_key, target, id)
    WHERE state IN ('pending', 'running');
CREATE INDEX intents_event_idx ON intents (event_id);

-- An event whose decision is committed but whose intents are not all resolved.
-- A redelivery finds it and resumes the intents instead of deciding again.
CREATE TABLE event_runs (
    event_id   uuid        PRIMARY KEY,
    ticket     text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- The services' least-privilege role (see 20261126000001_runtime_role.sql).
GRANT SELECT, INSERT, UPDATE ON intents TO accessgov_app;
GRANT USAGE ON SEQUENCE intents_id_seq TO accessgov_app;
GRANT SELECT, INSERT, DELETE ON event_runs TO accessgov_app;

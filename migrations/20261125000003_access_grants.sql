-- Current access per (application, subject, target): the reference-counted ledger.
-- `tickets` holds the tickets that currently hold this access; the provider
-- membership is removed only when the last hold is released.
CREATE TABLE access_grants (
    id            bigserial   PRIMARY KEY,
    application   text        NOT NULL,
    subject       text        NOT NULL,
    target        text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('active', 'revoked')),
    tickets       text[]      NOT NULL DEFAULT '{}',
    granted_at    timestamptz,
    revoked_at    timestamptz,
    expires_at    timestamptz,
    last_event_id uuid,
    last_event_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (application, subject, target)
);

CREATE INDEX access_grants_subject_idx ON access_grants (subject);
CREATE INDEX access_grants_expires_idx ON access_grants (expires_at) WHERE state = 'active';

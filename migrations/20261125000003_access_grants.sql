-- The reference-counted ledger of access accessgov manages.
--
-- access_grants: one row per (application, subject, target) with its current
-- state. grant_holds: which tickets hold that access (the reference count);
-- the provider membership is added when the first hold is taken and removed
-- only when the last one is released. `revoked_through` is the time of the
-- latest removal request applied, so an older grant can never overtake it.
CREATE TABLE access_grants (
    id              bigserial   PRIMARY KEY,
    application     text        NOT NULL,
    subject         text        NOT NULL,
    -- how connectors find the subject (email, subject_field values), kept for revokes on expiry
    subject_info    jsonb,
    target          text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('active', 'revoked')),
    granted_at      timestamptz,
    revoked_at      timestamptz,
    revoked_through timestamptz,
    last_event_id   uuid,
    last_event_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (application, subject, target)
);

CREATE INDEX access_grants_subject_idx ON access_grants (subject);

CREATE TABLE grant_holds (
    grant_id     bigint      NOT NULL REFERENCES access_grants (id),
    ticket       text        NOT NULL,
    access_level text        NOT NULL,
    event_id     uuid        NOT NULL,
    event_at     timestamptz NOT NULL,
    held_since   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    PRIMARY KEY (grant_id, ticket)
);

CREATE INDEX grant_holds_expires_idx ON grant_holds (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX grant_holds_ticket_idx ON grant_holds (ticket);

-- Per-ticket ordering: the newest event applied for each ticket. An older event
-- for the same ticket arriving later (a retry, a late webhook) is superseded.
CREATE TABLE ticket_progress (
    ticket        text        PRIMARY KEY,
    last_event_id uuid        NOT NULL,
    last_event_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The operator's inbox: requests that could not succeed, with their history,
-- until an operator replays or discards them.
CREATE TABLE dead_letters (
    id               bigserial   PRIMARY KEY,
    -- one row per dead message even if the drain is redelivered
    dead_key         text        NOT NULL UNIQUE,
    event_id         uuid,
    ticket           text,
    application      text,
    action           text,
    subject          text,
    message          jsonb       NOT NULL,
    error_class      text        NOT NULL,
    last_error       text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    attempt_history  jsonb       NOT NULL DEFAULT '[]'::jsonb,
    first_failed_at  timestamptz,
    died_at          timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    replayed_by      text,
    discarded_at     timestamptz,
    discarded_by     text,
    discard_reason   text
);

CREATE INDEX dead_letters_open_idx ON dead_letters (died_at) WHERE replayed_at IS NULL AND discarded_at IS NULL;
CREATE INDEX dead_letters_event_id_idx ON dead_letters (event_id);

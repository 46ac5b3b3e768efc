-- Idempotency: one row per event id the worker has handled. Inserted in the same
-- transaction as the event's audit rows, so a redelivery finds it and does nothing.
CREATE TABLE processed_events (
    event_id          uuid        PRIMARY KEY,
    dedupe_key        text        NOT NULL,
    ticket            text        NOT NULL,
    outcome           text        NOT NULL,
    processed_at      timestamptz NOT NULL DEFAULT now(),
    -- set the first time a duplicate arrives (one `duplicate` audit row, not one per copy)
    duplicate_seen_at timestamptz
);

CREATE INDEX processed_events_ticket_idx ON processed_events (ticket);

-- A dead letter can die more than once: an operator replays it and the replay dies
-- again. The row then reopens (its replayed/discarded marks are cleared) and counts
-- the death; `dead_letter_deaths` keeps one row per death the dead-queue drain
-- recorded, keyed by the death's `dead_key`, so that a redelivery of the same dead
-- message (the drain stopped before its ack) is still recorded once, while a new
-- death of a replay always is.
ALTER TABLE dead_letters ADD COLUMN deaths integer NOT NULL DEFAULT 1;

COMMENT ON COLUMN dead_letters.dead_key IS 'the dead_key of the first death; every death is in dead_letter_deaths';

CREATE TABLE dead_letter_deaths (
    dead_key       text        PRIMARY KEY,
    dead_letter_id bigint      NOT NULL REFERENCES dead_letters (id),
    died_at        timestamptz NOT NULL DEFAULT now(),
    error_class    text        NOT NULL,
    error          text        NOT NULL,
    -- attempts of this life of the message (since its publish or replay)
    attempts       integer     NOT NULL
);

CREATE INDEX dead_letter_deaths_dead_letter_idx ON dead_letter_deaths (dead_letter_id);

INSERT INTO dead_letter_deaths (dead_key, dead_letter_id, died_at, error_class, error, attempts)
SELECT dead_key, id, died_at, error_class, last_error, attempts FROM dead_letters;

-- The runtime role (see 20261126000001_runtime_role.sql): the drain appends deaths.
GRANT SELECT, INSERT ON dead_letter_deaths TO accessgov_app;

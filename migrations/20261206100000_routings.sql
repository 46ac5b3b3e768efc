-- Routings: what accessgov wrote to a ticket when it routed it (its approvers
-- and its plan comment), once per (ticket, step). A step is `created` (the new
-- ticket: validation, approvers, plan) or `stage:<status>` (an approval stage
-- entered). A redelivered or duplicated event finds its step here and writes
-- nothing again; a crash between writing to the ticket and this row is covered
-- by reading the ticket back before writing (fields compared, comments
-- searched for the routing's reference line).
CREATE TABLE routings (
    ticket    text        NOT NULL,
    step      text        NOT NULL,
    event_id  uuid        NOT NULL,
    outcome   text        NOT NULL CHECK (outcome IN ('routed', 'invalid', 'incomplete', 'skipped')),
    -- the plan as posted (what approval will change), compared at execution
    plan      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    routed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket, step)
);

-- The services' least-privilege role (see 20261126000001_runtime_role.sql).
GRANT SELECT, INSERT ON routings TO accessgov_app;

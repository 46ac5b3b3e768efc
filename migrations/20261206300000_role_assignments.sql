-- Birthright roles: which role each subject was last onboarded into, and by
-- which ticket (whose holds are the role's items). An onboarding of someone who
-- already holds a role (a mover) grants only the new role's other items and
-- revokes the items only the old role gave.
CREATE TABLE role_assignments (
    subject     text        NOT NULL,
    role        text        NOT NULL,
    ticket      text        NOT NULL,
    event_id    uuid        NOT NULL,
    -- the role's items when assigned: [[application, access level], ...]
    items       jsonb       NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, ticket)
);

CREATE INDEX role_assignments_subject_idx ON role_assignments (subject, assigned_at DESC);

-- The services' least-privilege role (see 20261126000001_runtime_role.sql).
GRANT SELECT, INSERT ON role_assignments TO accessgov_app;

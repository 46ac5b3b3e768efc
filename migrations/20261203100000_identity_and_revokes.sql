-- Identity binding: each hold records the provider identity it asked for (the
-- subject as connectors saw it: account id, email, subject_field values), and
-- access_grants.subject_info is the identity the provider membership was granted
-- to; it changes only when a new first hold is provisioned. Revokes and expiry act
-- on that recorded identity, whatever the ticket says later.
ALTER TABLE grant_holds ADD COLUMN identity jsonb;

-- Re-approval needs a new approval: when a ticket's access was last taken away
-- (its revoke, or the expiry of its holds). An approval completed before this
-- never grants again.
ALTER TABLE ticket_progress ADD COLUMN last_revoke_at timestamptz;

-- Time-bound access: set once the sweeper's expiry event for the hold is confirmed
-- by the broker; from then on the request pipeline (retries, dead letters) owns it.
ALTER TABLE grant_holds ADD COLUMN expiry_enqueued_at timestamptz;

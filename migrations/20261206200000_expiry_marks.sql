-- The expiry sweeper marks the holds it handed to the pipeline
-- (`expiry_enqueued_at`), and, with `[jsm.write_back] expiry_notice`, the holds
-- whose ticket was told of the coming expiry (`expiry_notice_at`).
--
-- 20261203100000 added `expiry_enqueued_at` without letting the services' role
-- write it: every sweep failed at its first mark (permission denied), so it
-- enqueued one due ticket per `expiry_interval` instead of all of them. The
-- grant is per column, the least the sweeper needs.
ALTER TABLE grant_holds ADD COLUMN expiry_notice_at timestamptz;

GRANT UPDATE (expiry_enqueued_at, expiry_notice_at) ON grant_holds TO accessgov_app;

-- The W3C trace context of the message when it died, so that a replay
-- continues the request's trace (one trace from webhook to the replayed
-- provider call). Covered by the runtime role's table-level INSERT.
ALTER TABLE dead_letters ADD COLUMN traceparent text;

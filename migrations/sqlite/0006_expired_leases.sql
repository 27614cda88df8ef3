-- Attempts whose lease runs, found cheaply: before a claim, a worker makes the expired ones
-- due at the time they became visible (a claim's due time is its lease end), so a
-- redelivery is claimed before the work that arrived while its step ran, not after it.
CREATE INDEX attempts_leased ON attempts (lease_until) WHERE status = 'claimed' AND due_at > visible_at;

-- The W3C trace context a run continues (`traceparent`): every step span of the run, on any
-- worker process, is a child of it.
ALTER TABLE runs ADD COLUMN trace_parent TEXT;

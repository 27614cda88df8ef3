-- Dynamic work: a run's open works and counters (JSON of DynamicState), and the dynamic node
-- an attempt runs (JSON of AttemptNode; NULL for a declared step). The works themselves are
-- journaled as `dynamic_work_recorded` facts.
ALTER TABLE runs ADD COLUMN dynamic TEXT;
ALTER TABLE attempts ADD COLUMN node TEXT;

-- Claims take due attempts in the order they became visible, (visible_at, runnable_key): an
-- expired claim (due again at its lease end) or an outcome recorded but not applied became
-- visible before the work that arrived while it ran, so a redelivery goes before that
-- backlog. The key in the index keeps a claim one index step when many attempts share a
-- visible time (a fan-out planned at once), and the second index does the same for a
-- completion that chains its run's next due attempt.
DROP INDEX attempts_due;
CREATE INDEX attempts_claim ON attempts (queue, visible_at, runnable_key) WHERE due_at IS NOT NULL;
CREATE INDEX attempts_due_by_run ON attempts (run_id, due_at, runnable_key) WHERE due_at IS NOT NULL;

-- Dynamic work: a run's open works (JSON of DynamicState), and the dynamic node
-- an attempt runs (JSON of AttemptNode; NULL for a declared step). The works themselves are
-- journaled as `dynamic_work_recorded` facts.
ALTER TABLE runs ADD COLUMN dynamic TEXT;
ALTER TABLE attempts ADD COLUMN node TEXT;

-- Claims take due attempts in (due_at, runnable_key) order. With the key in the index a claim
-- stays one index step when many attempts share a due time (a fan-out planned at once)
-- instead of sorting them all; the second index does the same for a completion that chains
-- its run's next due attempt.
DROP INDEX attempts_due;
CREATE INDEX attempts_due ON attempts (queue, due_at, runnable_key) WHERE due_at IS NOT NULL;
CREATE INDEX attempts_due_by_run ON attempts (run_id, due_at, runnable_key) WHERE due_at IS NOT NULL;

-- Dynamic work: a run's open works and counters (JSON of DynamicState), and the dynamic node
-- an attempt runs (JSON of AttemptNode; NULL for a declared step). The works themselves are
-- journaled as `dynamic_work_recorded` facts.
ALTER TABLE runs ADD COLUMN dynamic TEXT;
ALTER TABLE attempts ADD COLUMN node TEXT;

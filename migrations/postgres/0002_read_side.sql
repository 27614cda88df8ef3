-- Read side: deadlines persisted when an attempt is planned (JSON: started_at, due_at,
-- due_soon_at, escalate_at, escalation), and the indexes that serve listing by queue and by
-- workflow or queue together with a status.
ALTER TABLE attempts ADD COLUMN deadline TEXT;
CREATE INDEX runs_by_queue ON runs (queue, created_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow_status ON runs (workflow, status, created_at DESC, run_id DESC);
CREATE INDEX runs_by_queue_status ON runs (queue, status, created_at DESC, run_id DESC);

-- Read side: deadlines persisted when an attempt is planned (JSON: started_at, due_at,
-- due_soon_at, escalate_at, escalation), and the index that serves listing by queue.
ALTER TABLE attempts ADD COLUMN deadline TEXT;
CREATE INDEX runs_by_queue ON runs (queue, created_at DESC, run_id DESC);

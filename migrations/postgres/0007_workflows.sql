-- Workflows registered in the database (by the editor, `Engine::workflow_store`), one row
-- per version: every process can list, open and start them. Runs pin their own definition
-- at start, so a new version never changes a run already started.
CREATE TABLE workflow_versions (
    workflow TEXT NOT NULL,
    version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    registered_by TEXT NOT NULL,
    comment TEXT,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (workflow, version)
);

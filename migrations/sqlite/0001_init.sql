-- Squid Mesh durable engine: journal of facts plus derived rows, all written in one
-- transaction per logical transition. Timestamps are microseconds since the Unix epoch.

CREATE TABLE definitions (
    hash        TEXT PRIMARY KEY,   -- sha256 of the resolved definition body
    workflow    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    body        TEXT NOT NULL,      -- JSON: the spec and the pinned action digests
    created_at  BIGINT NOT NULL
);

CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    version         TEXT,
    fingerprint     TEXT NOT NULL,
    definition_hash TEXT NOT NULL REFERENCES definitions (hash),
    trigger_name    TEXT NOT NULL,
    queue           TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           TEXT NOT NULL,
    context         TEXT NOT NULL,
    steps           TEXT NOT NULL,
    manual          TEXT,
    compensation    TEXT,
    error           TEXT,
    idempotency_key TEXT,
    payload_hash    TEXT NOT NULL,
    parent_run_id   TEXT,
    replayed_from   TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    revision        BIGINT NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at DESC, run_id DESC);

-- The dispatch queue. `due_at` is when a row next needs a worker: visible_at for a
-- scheduled attempt, lease_until for a claimed one (expiry means redelivery), the record
-- time for an outcome awaiting application, NULL once settled. One index serves all three.
CREATE TABLE attempts (
    runnable_key     TEXT PRIMARY KEY,
    run_id           TEXT NOT NULL REFERENCES runs (run_id),
    step             TEXT NOT NULL,
    attempt          BIGINT NOT NULL,
    seq              BIGINT NOT NULL,    -- journal position of the fact that planned it
    queue            TEXT NOT NULL,
    status           TEXT NOT NULL,
    visible_at       BIGINT NOT NULL,
    due_at           BIGINT,
    claim_id         TEXT,
    claim_token_hash TEXT,
    owner            TEXT,
    lease_until      BIGINT,
    claims           BIGINT NOT NULL DEFAULT 0,
    input            TEXT NOT NULL,
    outcome          TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX attempts_due ON attempts (queue, due_at) WHERE due_at IS NOT NULL;
CREATE INDEX attempts_by_run ON attempts (run_id);

CREATE TABLE journal (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    occurred_at BIGINT NOT NULL
);
CREATE INDEX journal_by_run ON journal (run_id, id);

-- Receipts of control commands that carried an idempotency key: repeating the command
-- returns the recorded result and writes nothing.
CREATE TABLE commands (
    idempotency_key TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    result_run_id   TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

-- Child runs by (parent run, parent step, child key): the same key from the same step names
-- the same child, across retries of the parent step.
CREATE TABLE child_runs (
    parent_run_id TEXT NOT NULL,
    parent_step   TEXT NOT NULL,
    child_key     TEXT NOT NULL,
    child_run_id  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (parent_run_id, parent_step, child_key)
);
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- Schedules: one row per cron trigger of a workflow applied with `schedules apply`, the
-- windows each one fired (the window is the unique key, so every process agrees on what
-- fired), and an audit trail of what operators did to a schedule.
CREATE TABLE schedules (
    workflow        TEXT NOT NULL,
    trigger_name    TEXT NOT NULL,
    definition_hash TEXT NOT NULL REFERENCES definitions (hash),
    cron            TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    policy          TEXT NOT NULL,      -- JSON of the trigger's SchedulePolicy
    queue           TEXT NOT NULL,
    state           TEXT NOT NULL,      -- active | paused
    next_fire_at    BIGINT,             -- the first window not yet handled; NULL: over
    due_at          BIGINT,             -- when a scheduler must look next; NULL: nothing to do
    queued_at       BIGINT,             -- overlap queue_one: the window waiting for the last run
    last_fired_at   BIGINT,             -- the latest window that started a run
    last_run_id     TEXT,
    missed          BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (workflow, trigger_name)
);
CREATE INDEX schedules_due ON schedules (due_at) WHERE due_at IS NOT NULL;

CREATE TABLE schedule_fires (
    workflow     TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    outcome      TEXT NOT NULL,         -- started | skipped | queued
    origin       TEXT NOT NULL,         -- scheduler | backfill | signal
    run_id       TEXT,
    fired_at     BIGINT NOT NULL,
    PRIMARY KEY (workflow, trigger_name, scheduled_at)
);

CREATE TABLE schedule_events (
    id           BIGINT NOT NULL,
    workflow     TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    kind         TEXT NOT NULL,         -- applied | paused | resumed | backfilled | removed
    actor        TEXT,
    comment      TEXT,
    detail       TEXT NOT NULL,         -- JSON
    occurred_at  BIGINT NOT NULL,
    PRIMARY KEY (workflow, trigger_name, id)
);

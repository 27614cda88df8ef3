-- The action catalog: approved WebAssembly components, shared by every process that opens
-- this database. Component bytes are stored once per digest; each (key, digest) approval is
-- a version with its limits, capabilities and self-description; a key has at most one
-- current version (active or disabled). Every change bumps catalog_version in the same
-- transaction, so a process that cached the catalog knows with one read whether it is stale.
CREATE TABLE action_blobs (
    digest      TEXT PRIMARY KEY,       -- sha256:<hex> of the bytes
    bytes       BYTEA NOT NULL,
    size_bytes  BIGINT NOT NULL,
    stored_at   BIGINT NOT NULL
);

CREATE TABLE action_versions (
    action_key   TEXT NOT NULL,
    digest       TEXT NOT NULL REFERENCES action_blobs (digest),
    state        TEXT NOT NULL,         -- active | disabled | superseded | revoked
    limits       TEXT NOT NULL,         -- JSON of ActionLimits
    capabilities TEXT NOT NULL,         -- JSON of Capabilities
    description  TEXT NOT NULL,         -- JSON of the component's describe()
    approved_by  TEXT NOT NULL,
    approved_at  BIGINT NOT NULL,
    approved_seq BIGINT NOT NULL,       -- the catalog version of the approval: its order
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (action_key, digest)
);
CREATE UNIQUE INDEX action_versions_current ON action_versions (action_key)
    WHERE state IN ('active', 'disabled');

CREATE TABLE action_events (
    seq         BIGINT PRIMARY KEY,     -- the catalog version this change produced
    action_key  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    kind        TEXT NOT NULL,          -- approved | disabled | enabled | revoked
    actor       TEXT NOT NULL,
    comment     TEXT,
    detail      TEXT NOT NULL,          -- JSON
    occurred_at BIGINT NOT NULL
);
CREATE INDEX action_events_key ON action_events (action_key, seq);

CREATE TABLE catalog_version (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0);

-- Steps that reached an action no process may run yet (unknown key or digest, disabled
-- key): the attempt waits, and approving or enabling the key makes it due at once.
CREATE TABLE action_waits (
    runnable_key TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    action_key   TEXT NOT NULL,
    digest       TEXT,
    code         TEXT NOT NULL,         -- action_unknown | action_disabled
    message      TEXT NOT NULL,
    since        BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX action_waits_key ON action_waits (action_key);
CREATE INDEX action_waits_run ON action_waits (run_id);

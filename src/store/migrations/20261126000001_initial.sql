-- Portable SQL: the same migration runs on SQLite and PostgreSQL.
-- Times are RFC 3339 UTC text; money is integer fen.

-- One row per input that reached an outcome, keyed by its idempotency key
-- ("request:<request_id>" or "input:<topic>/<partition>/<offset>" for dead
-- letters). `outputs` holds the exact messages published, so a redelivered
-- input gets the same bytes again.
CREATE TABLE outcomes (
    idem_key   TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    outputs    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE decisions (
    request_id     TEXT PRIMARY KEY,
    decision_id    TEXT NOT NULL UNIQUE,
    subject        TEXT NOT NULL,
    dataset        TEXT NOT NULL,
    scenario       TEXT NOT NULL,
    operation      TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    reason_code    TEXT,
    policy_version TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    decided_at     TEXT NOT NULL
);
CREATE INDEX decisions_by_subject ON decisions (subject, decided_at);

-- Append-only. (chain, seq) is the chain position; a second writer racing
-- for the same position fails here instead of forking the chain.
CREATE TABLE audit_events (
    chain       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    body        TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);

CREATE TABLE usage_records (
    usage_id    TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL UNIQUE,
    subject     TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    period      TEXT NOT NULL,
    quantity    BIGINT NOT NULL,
    amount_fen  BIGINT NOT NULL,
    body        TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX usage_by_subject_period ON usage_records (subject, dataset, period);

-- Requests the policy sent to review, until a verdict or the timeout
-- decides them. `probe` holds the request (without its token) and the
-- verified principal, to decide it again when a reviewer approves. A
-- review is closed once (`WHERE state = 'pending'`), so two verdicts racing
-- on two instances decide it once.
CREATE TABLE reviews (
    request_id          TEXT PRIMARY KEY,
    pending_decision_id TEXT NOT NULL,
    subject             TEXT NOT NULL,
    holder              TEXT NOT NULL,
    dataset             TEXT NOT NULL,
    scenario            TEXT NOT NULL,
    operation           TEXT NOT NULL,
    probe               TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    deadline            BIGINT NOT NULL,
    state               TEXT NOT NULL,
    final_decision_id   TEXT,
    reviewer            TEXT,
    closed_at           BIGINT
);
CREATE INDEX reviews_by_state ON reviews (state, deadline);

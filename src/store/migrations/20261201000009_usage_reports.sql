-- Accepted usage reports from data hosts (see contract/usage_report.rs):
-- each is a usage record with basis `report`, kept apart from the
-- approvals' records (one per request). `report_id` is the host's
-- idempotency key; `request_digest` names the report's audit event, so a
-- prune removes the report with it. `flagged` = 1 when the report went
-- beyond its grant's volume or the quota (`usage.exceeds_grant`).
CREATE TABLE usage_reports (
    report_id      TEXT PRIMARY KEY,
    usage_id       TEXT NOT NULL UNIQUE,
    decision_id    TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    subject        TEXT NOT NULL,
    dataset        TEXT NOT NULL,
    host           TEXT NOT NULL,
    period         TEXT NOT NULL,
    quantity       BIGINT NOT NULL,
    amount_fen     BIGINT NOT NULL,
    flagged        BIGINT NOT NULL,
    request_digest TEXT NOT NULL,
    body           TEXT NOT NULL,
    recorded_at    TEXT NOT NULL
);
CREATE INDEX usage_reports_by_grant ON usage_reports (decision_id);
CREATE INDEX usage_reports_by_period ON usage_reports (period, subject, dataset);

-- Every grant issued, so it can be withdrawn: by an operator's revoke
-- command, or when the policy in force no longer allows its request
-- (`probe` holds the request, without its token, and the verified
-- principal, to decide it again). A grant is live while `revoked_at` is
-- NULL and `expires_at` (Unix seconds) is in the future; revoking sets the
-- revoked_* columns once (`WHERE revoked_at IS NULL`), so two instances
-- revoking the same grant announce it once.
CREATE TABLE grants (
    decision_id    TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL,
    subject        TEXT NOT NULL,
    holder         TEXT NOT NULL,
    dataset        TEXT NOT NULL,
    scenario       TEXT NOT NULL,
    operation      TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    expires_at     BIGINT NOT NULL,
    probe          TEXT NOT NULL,
    revoked_at     BIGINT,
    revocation_id  TEXT,
    revoke_code    TEXT,
    revoke_reason  TEXT
);
CREATE INDEX grants_by_expiry ON grants (expires_at);
CREATE INDEX grants_by_subject ON grants (subject);
CREATE INDEX grants_by_dataset ON grants (dataset);
CREATE INDEX grants_by_scenario ON grants (scenario);

-- Outcomes that belong to no input (a grant revoked because the policy no
-- longer allows it) whose messages are not yet on their topics: queued in
-- the transaction that stores the outcome, deleted once the broker took
-- them all (their audit events go through audit_outbox).
CREATE TABLE message_outbox (
    idem_key TEXT PRIMARY KEY
);

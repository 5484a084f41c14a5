-- Audit events that belong to no input (the policy chain: loaded,
-- rejected, restored) and are not yet on the audit topic. Such an event has
-- no input whose redelivery would publish it again, so it is queued here in
-- the transaction that stores it and deleted once the broker acknowledged
-- it: a crash between the two leaves it queued, and it is published at the
-- next start.
CREATE TABLE audit_outbox (
    chain TEXT NOT NULL,
    seq   BIGINT NOT NULL,
    PRIMARY KEY (chain, seq)
);

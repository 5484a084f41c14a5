-- Running totals per subject, dataset and billing period, kept in the same
-- transaction as each usage record, so a quota check reads one row instead
-- of summing the month's ledger.
CREATE TABLE usage_counters (
    subject  TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    period   TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (subject, dataset, period)
);

INSERT INTO usage_counters (subject, dataset, period, quantity)
SELECT subject, dataset, period, SUM(quantity) FROM usage_records GROUP BY subject, dataset, period;

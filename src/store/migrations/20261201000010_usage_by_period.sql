-- A year's revenue is summed by period (usage reconcile, usage report, the
-- revenue-cap check): without this index each sum reads every record.
CREATE INDEX usage_by_period ON usage_records (period);

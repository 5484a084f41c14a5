-- What auditors ask about, as columns beside each event's body, indexed so
-- a query over a year of events answers at once (`tollgate audit query`).
-- `scenario` is the decision's (NULL for other events and for events
-- stored before this migration); the others are the event's own fields,
-- filled for older events at start-up.
ALTER TABLE audit_events ADD COLUMN subject TEXT;
ALTER TABLE audit_events ADD COLUMN resource TEXT;
ALTER TABLE audit_events ADD COLUMN scenario TEXT;
ALTER TABLE audit_events ADD COLUMN outcome TEXT;
ALTER TABLE audit_events ADD COLUMN reason_code TEXT;
CREATE INDEX audit_by_time ON audit_events (occurred_at);
CREATE INDEX audit_by_subject ON audit_events (subject, occurred_at);
CREATE INDEX audit_by_resource ON audit_events (resource, occurred_at);
CREATE INDEX audit_by_scenario ON audit_events (scenario, occurred_at);

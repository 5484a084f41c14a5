-- What each decision was decided from and what it attached, so that a
-- proposed policy can be replayed against the traffic tollgate actually
-- decided (`tollgate policy impact`).
--   inputs:  {"principal", "request" (without its token), "used", "reviewed"};
--            NULL when the token did not verify (no policy was consulted)
--            and for decisions stored before this migration.
--   effects: {"obligations": [...], "unit_price_fen", "amount_fen"}.
-- The token itself is never stored.
ALTER TABLE decisions ADD COLUMN inputs TEXT;
ALTER TABLE decisions ADD COLUMN effects TEXT;
CREATE INDEX decisions_by_time ON decisions (decided_at, request_id);

-- Each `tollgate audit verify` run and what it found, so the console can
-- show when the trail was last verified (and whether it held).
CREATE TABLE audit_verifications (
    verified_at TEXT NOT NULL,
    source      TEXT NOT NULL,
    ok          INTEGER NOT NULL,
    summary     TEXT NOT NULL
);
CREATE INDEX audit_verifications_by_time ON audit_verifications (verified_at);

-- Single-use token ids: the first request that presents a token with a
-- `jti` owns it; another request with the same (issuer, jti) is a replay.
-- Rows are purged once their token has expired (it is refused as expired
-- from then on anyway).
CREATE TABLE token_uses (
    issuer     TEXT NOT NULL,
    jti        TEXT NOT NULL,
    request_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX token_uses_by_expiry ON token_uses (expires_at);

-- The public halves of the keys that sign grants, for the JWKS data hosts
-- verify grants with. One row per key and instance: `signs_until` (Unix
-- seconds) is an upper bound on the expiry of every grant that instance
-- signed or may sign with the key; it is raised before a grant past it is
-- signed and lowered to the true last expiry when the instance stops. A key
-- is published while any instance's bound is in the future, so a retired
-- key stays in the JWKS exactly as long as a grant it signed can be valid.
CREATE TABLE grant_keys (
    kid         TEXT NOT NULL,
    instance    TEXT NOT NULL,
    jwk         TEXT NOT NULL,
    signs_until BIGINT NOT NULL,
    PRIMARY KEY (kid, instance)
);

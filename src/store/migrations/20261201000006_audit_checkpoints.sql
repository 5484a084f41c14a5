-- Signed checkpoints of the audit chains (see contract/checkpoint.rs): a
-- chain must reach its latest checkpoint, so a cut tail or a removed chain
-- shows. `published` is 0 until the checkpoint topic acknowledged it.
-- One checkpoint per predecessor: two instances checkpointing a chain at
-- once cannot both follow the same checkpoint, so a chain's checkpoints
-- stay one line (each names the previous one's seq).
CREATE TABLE audit_checkpoints (
    chain        TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    previous_seq BIGINT NOT NULL,
    body         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    published    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chain, seq),
    UNIQUE (chain, previous_seq)
);

-- Every audit key that ever signed a checkpoint, kept for as long as the
-- trail is: a checkpoint years old must still verify.
CREATE TABLE audit_keys (
    kid        TEXT PRIMARY KEY,
    jwk        TEXT NOT NULL,
    first_used TEXT NOT NULL
);

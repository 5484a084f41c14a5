-- Each checkpoint round looks for checkpoints the topic has not
-- acknowledged: found by index, not by reading every checkpoint ever made.
CREATE INDEX audit_checkpoints_unpublished ON audit_checkpoints (published);

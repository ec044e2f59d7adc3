-- Expired tokens are pruned; this finds them without reading every token.
CREATE INDEX tokens_by_expiry ON tokens (expires_at) WHERE expires_at IS NOT NULL;

-- Clients an administrator can revoke, clients that act for a user, and broker
-- passwords that change when credentials are revoked.

-- When the client was revoked: its secret no longer mints tokens.
ALTER TABLE endpoint_clients ADD COLUMN revoked_at BIGINT;
-- For a user client (`admin add-user-client`): the user its tokens act as. NULL for an
-- endpoint client, whose tokens act as the client itself.
ALTER TABLE endpoint_clients ADD COLUMN acts_as_identity_id TEXT REFERENCES identities (identity_id);
-- The client whose grant issued a token, so that revoking the client revokes it.
ALTER TABLE tokens ADD COLUMN client_id TEXT;
CREATE INDEX tokens_by_client ON tokens (client_id) WHERE client_id IS NOT NULL;
-- Mixed into the broker password of the identity's (or endpoint's) account: a new
-- value is a new password, so revoking credentials also locks out the broker login
-- they revealed, and an endpoint id deleted and registered again gets a new one.
ALTER TABLE identities ADD COLUMN broker_salt TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN broker_salt TEXT NOT NULL DEFAULT '';
